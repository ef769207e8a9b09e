"""Flow matching on the linear path, shared by every continuous-token method.

Convention (FlowAR, SiT): x_t = (1 - t) * x_0 + t * eps, so t = 0 is data and t = 1 is
noise; the network predicts the velocity v = dx_t/dt = eps - x_0, and sampling integrates
dx/dt = v from t = 1 down to t = 0.
"""
from __future__ import annotations

from typing import Callable

import torch

from methods.guidance import guide

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t on the linear path; t broadcasts against x0 (e.g. (B, 1, 1))."""
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_matching_loss(velocity: Velocity, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared velocity error. x0, noise: (B, N, C); t: (B,)."""
    tb = t.view(-1, *[1] * (x0.dim() - 1))
    err = (velocity(interpolate(x0, noise, tb), t) - velocity_target(x0, noise)) ** 2
    return err.flatten(1).mean(1)


def flowar_time_grid(num_steps: int) -> torch.Tensor:
    """FlowAR's Euler grid (float64): half the points on [1, 0.3], the rest on [0.25, 0], so
    the steps are denser near the data; ``num_steps == 50`` uses the uniform grid instead.
    For odd counts (e.g. 25) this gives num_steps - 1 Euler steps, as in the official sampler."""
    if num_steps < 2:
        raise ValueError(f"num_flow_steps={num_steps} is too small; use at least 2")
    if num_steps == 50:
        return torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return torch.cat([torch.linspace(1, 0.3, num_steps // 2, dtype=torch.float64),
                      torch.linspace(0.25, 0, num_steps // 2 + 1, dtype=torch.float64)])


@torch.no_grad()
def euler_sample(velocity: Velocity, noise: torch.Tensor, time_grid: torch.Tensor, cfg_scale: float = 1.0,
                 guidance_low: float = 0.0, guidance_high: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v from time_grid[0] (noise) to time_grid[-1] in float64.

    With cfg_scale > 1 the batch is [conditional; unconditional]. Guidance applies only for
    t in [guidance_low, guidance_high] (the guidance interval, Kynkaanniemi et al. 2024);
    inside it both halves are fed the conditional state, outside it each half evolves on
    its own. The network sees the noise's dtype; the state stays float64.
    """
    dtype = noise.dtype
    x = noise.to(torch.float64)
    for t_cur, t_next in zip(time_grid[:-1].tolist(), time_grid[1:].tolist()):
        guided = cfg_scale > 1.0 and guidance_low <= t_cur <= guidance_high
        inp = torch.cat([x[: x.shape[0] // 2]] * 2) if guided else x
        t = torch.full((inp.shape[0],), t_cur, dtype=torch.float64, device=x.device)
        v = velocity(inp.to(dtype), t.to(dtype)).to(torch.float64)
        if guided:   # the guided velocity for both halves, so the batch layout stays the same
            v = torch.cat([guide(v, cfg_scale)] * 2)
        x = x + (t_next - t_cur) * v
    return x
