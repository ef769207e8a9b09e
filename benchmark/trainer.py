"""A method-agnostic training loop: AdamW with the official schedules (cosine, VAR's lin0) and
weight-decay rules, EMA, gradient clipping, bf16 / fp16 (loss-scaled) autocast, atomic
checkpoints, exact resume and a guard against non-finite losses.
Under torch.distributed (benchmark/distributed.py) the model is wrapped in DDP and each rank's
``batch_loss`` takes its shard of the global batch.

Every step is a pure function of (seed, step): its batch comes from ``batch_loss(step,
generator)`` and its randomness (noise, times, dropout, label drop) from generators seeded by
the step. A resumed run therefore continues the very same loss curve.

Preemption: SIGUSR1/SIGUSR2 (Slurm's warning before a time limit or preemption; submitit's
requeue signal), SIGTERM and SIGINT are held until the current step ends; the trainer then
saves a checkpoint at that step and hands the signal on (to submitit, which requeues the job,
or to Python's default). Nothing between two checkpoints is lost.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.config import TrainConfig
from benchmark.io import remove_stale_temporaries, save_torch

CHECKPOINT = "checkpoint-last.pt"


class NonFiniteLossError(RuntimeError):
    pass


class StoppedBySignal(RuntimeError):
    """A job told to stop (SIGTERM) stopped after writing its checkpoint."""


HELD_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
REPEAT_S = 1.0   # a held signal repeated within this many seconds is the same request


class _Objective(nn.Module):
    """The model with its loss as ``forward``, so that DDP sees the call it synchronises on."""

    def __init__(self, model: nn.Module, batch_loss: Callable[[int, torch.Generator], torch.Tensor]):
        super().__init__()
        self.model, self.batch_loss = model, batch_loss

    def forward(self, step: int, generator: torch.Generator) -> torch.Tensor:
        return self.batch_loss(step, generator)


LIN0_WARMUP_FROM, LIN0_PLATEAU = 0.005, 0.05   # VAR utils/lr_control.py: wp0, lin0's T
FP16_SCALER = {"init_scale": 2.0 ** 11, "growth_interval": 1000}   # VAR utils/amp_sc.py
FP16_MAX_SCALE = 32768.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of ``step`` (0-based) under ``cfg.schedule``: cosine / linear (warm-up
    from 0 to cfg.lr, then down to cfg.min_lr at cfg.steps) or lin0 (VAR's lr_wd_annealing:
    warm-up from 0.005 x lr, flat for 5% of the steps after warm-up, then linear to min_lr at
    the last step)."""
    if cfg.schedule == "lin0":
        if step < cfg.warmup_steps:
            return cfg.lr * (LIN0_WARMUP_FROM + (1 - LIN0_WARMUP_FROM) * step / cfg.warmup_steps)
        done = (step - cfg.warmup_steps) / (cfg.steps - 1 - cfg.warmup_steps)
        end = cfg.min_lr / cfg.lr
        return cfg.lr * (1.0 if done < LIN0_PLATEAU else end + (1 - end) * (1 - done) / (1 - LIN0_PLATEAU))
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), 1.0)
    decay = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * decay


def weight_decay_at(step: int, cfg: TrainConfig) -> float:
    """Constant, or (weight_decay_end >= 0) VAR's half-cosine from weight_decay to
    weight_decay_end over the whole run."""
    if cfg.weight_decay_end < 0:
        return cfg.weight_decay
    end = cfg.weight_decay_end
    return end + (cfg.weight_decay - end) * (0.5 + 0.5 * math.cos(math.pi * step / max(cfg.steps - 1, 1)))


def exempt_from_weight_decay(name: str, p: torch.Tensor, keys=()) -> bool:
    """1-D parameters, biases, and names containing one of ``keys`` (VAR's filter_params rule;
    FlowAR's add_weight_decay is the same rule without keys)."""
    return p.ndim <= 1 or name.endswith("bias") or any(k in name for k in keys)


def param_groups(model: nn.Module, weight_decay: float, no_weight_decay=()) -> list[dict]:
    """Two AdamW groups: with weight decay, and without (``exempt_from_weight_decay``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if exempt_from_weight_decay(name, p, no_weight_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "decays": True},
            {"params": no_decay, "weight_decay": 0.0, "decays": False}]


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 12345) % (2 ** 62)


class Trainer:
    """Trains ``model`` by minimising ``batch_loss(step, generator)``.

    Writes into ``run_dir``: ``checkpoint-last.pt`` (model, EMA, optimizer, step, loss
    history) every ``cfg.checkpoint_every`` steps and at the end, and ``history.json``.
    """

    def __init__(self, model: nn.Module, batch_loss: Callable[[int, torch.Generator], torch.Tensor],
                 cfg: TrainConfig, run_dir: str | Path, seed: int = 0, device: torch.device | str = "cpu",
                 desc: str = "train"):
        self.model, self.batch_loss, self.cfg = model, batch_loss, cfg
        self.run_dir, self.seed, self.device, self.desc = Path(run_dir), seed, torch.device(device), desc
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, tuple(cfg.no_weight_decay)),
                                           lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        # fp16 needs loss scaling (VAR's AmpOptimizer); bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(self.device.type, **FP16_SCALER) if cfg.autocast == "fp16" else None
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.step, self.history, self.skipped = 0, [], 0
        self.window = [0.0, 0]   # loss sum and count since the last logged entry (kept across a resume)
        self.objective: nn.Module = _Objective(model, batch_loss)
        self.held: int | None = None        # a signal received during a step, handled after it
        self.held_at = 0.0
        self.signalled, self.previous = False, {}

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def autocast(self):
        mode = self.cfg.autocast
        use = mode in ("bf16", "fp16") or (mode == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16, enabled=use)

    def save(self) -> None:
        if not distributed.is_main():   # ranks hold the same weights; one writes
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_torch({"model": self.model.state_dict(), "ema": self.ema, "optimizer": self.optimizer.state_dict(),
                    "step": self.step, "history": self.history, "window": self.window, "skipped": self.skipped,
                    **({"scaler": self.scaler.state_dict()} if self.scaler else {})}, self.checkpoint_path)

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; True if training resumes from it. A
        half-written checkpoint left by a killed process is removed (the last whole one stays)."""
        for tmp in remove_stale_temporaries(self.checkpoint_path) if distributed.is_main() else []:
            print(f"{self.desc}: removed {tmp.name}, a checkpoint write cut short", file=sys.stderr, flush=True)
        if not self.checkpoint_path.exists():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
        except Exception as err:
            raise RuntimeError(f"cannot resume from {self.checkpoint_path}: {err}. The file is corrupt or from "
                               "another config; delete it to start over.") from err
        self.ema = state["ema"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = state["step"], state["history"]
        self.window = list(state.get("window", [0.0, 0]))
        self.skipped = int(state.get("skipped", 0))
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if distributed.is_main():
            print(f"{self.desc}: resumed from step {self.step} ({self.checkpoint_path})", file=sys.stderr, flush=True)
        return True

    @torch.no_grad()
    def update_ema(self) -> None:
        # Warm-up (as TF's ExponentialMovingAverage with num_updates): early on the rate is
        # lower, so the average forgets the random initialisation. Without it a 0.998 EMA
        # still holds 13% of the init after 1000 steps, which ruins short runs (measured).
        rate = min(self.cfg.ema_rate, (1 + self.step) / (10 + self.step)) if self.cfg.ema_warmup else self.cfg.ema_rate
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                self.ema[k].mul_(rate).add_(v.detach(), alpha=1 - rate)
            else:
                self.ema[k].copy_(v)

    def train_step(self) -> float | None:
        """One optimiser step; its loss, or None for a batch skipped under train.skip_nonfinite."""
        # Ranks draw their own streams (rank 0's is the single-process one).
        seed = step_seed(self.seed, self.step) + 7919 * distributed.rank()
        torch.manual_seed(seed)  # dropout / label drop
        generator = torch.Generator(self.device).manual_seed(seed + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
            decays = group.get("decays", group["weight_decay"] > 0)   # checkpoints from before the flag
            group["weight_decay"] = weight_decay_at(self.step, self.cfg) if decays else 0.0
        with self.autocast():
            loss = self.objective(self.step, generator)
        # One collective per step: the global-batch loss, and whether any rank holds a signal.
        mean_loss, signalled_share = distributed.all_mean([loss.item(), float(self.held is not None)])
        self.signalled = signalled_share > 0
        if not math.isfinite(mean_loss) and self.skipped < self.cfg.skip_nonfinite:
            self.skipped += 1
            print(f"{self.desc}: loss is {mean_loss} at step {self.step}; batch skipped, no update ({self.skipped} of "
                  f"train.skip_nonfinite={self.cfg.skip_nonfinite})", file=sys.stderr, flush=True)
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            return None
        if not math.isfinite(mean_loss):
            kept = f"the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path.exists() \
                else "no checkpoint was written yet"
            raise NonFiniteLossError(f"{self.desc}: loss is {mean_loss} at step {self.step}; training stopped and "
                                     f"{kept}. Lower train.lr or check the data.")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
        else:   # VAR's AmpOptimizer: scaled backward, unscale, clip, step (skipped on inf), update, cap
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() > FP16_MAX_SCALE:
                self.scaler.update(new_scale=FP16_MAX_SCALE)
        self.update_ema()
        self.step += 1
        return mean_loss

    @contextmanager
    def holding_signals(self):
        """Hold preemption / interrupt signals until the end of a step (see the module doc)."""
        if threading.current_thread() is not threading.main_thread():   # signals go to the main thread
            yield
            return
        self.previous = {sig: signal.getsignal(sig) for sig in HELD_SIGNALS}
        for sig in HELD_SIGNALS:
            signal.signal(sig, self.hold)
        try:
            yield
        finally:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def hold(self, signum: int, frame) -> None:
        # Asked twice: act now. The same signal again within a second is one request sent two
        # ways (Ctrl-C reaches this process from the terminal and from the sweep's client).
        if self.held is not None and not (signum == self.held and time.time() - self.held_at < REPEAT_S):
            self.deliver(signum)
        if self.held is None:
            self.held, self.held_at = signum, time.time()

    def deliver(self, signum: int) -> None:
        """What would have happened without holding: the previous handler (submitit's requeue,
        Python's KeyboardInterrupt) or the default action. Returns if that ignores the signal.
        Inside a submitit job SIGTERM's handler only logs ("Bypassing signal"): the job would
        train on after `kill`; it stops here instead, its checkpoint written."""
        handler = self.previous.get(signum, signal.SIG_DFL)
        if signum == signal.SIGTERM and getattr(handler, "__name__", "") == "bypass":
            raise StoppedBySignal(f"{self.desc}: SIGTERM: stopped with a checkpoint at step {self.step} "
                                  f"({self.checkpoint_path}); run the same command again to resume")
        if callable(handler):
            handler(signum, None)
        elif handler in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            signal.signal(signum, self.hold)

    def on_signal(self) -> None:
        """A signal arrived during the step that just ended (here or on another rank):
        checkpoint at this step, then hand the signal on."""
        self.save()
        distributed.barrier()
        signum, self.held = self.held, None
        if signum is None:   # only another rank was signalled: it decides
            return
        print(f"{self.desc}: {signal.Signals(signum).name} received; checkpoint saved at step {self.step}",
              file=sys.stderr, flush=True)
        self.deliver(signum)

    def fit(self) -> list[tuple[int, float]]:
        """Train to cfg.steps (resuming if a checkpoint exists); returns the loss history."""
        self.model.train()
        self.resume()
        if distributed.is_distributed():   # gradients averaged over ranks; rank 0's weights broadcast
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(_Objective(self.model, self.batch_loss), device_ids=ids)
        start = time.time()
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=self.desc, dynamic_ncols=True,
                   disable=os.environ.get("SCALEWISE_PROGRESS", "1") == "0" or not distributed.is_main())
        with self.holding_signals():
            while self.step < self.cfg.steps:
                loss = self.train_step()
                if loss is not None:
                    self.window = [self.window[0] + loss, self.window[1] + 1]
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    mean = self.window[0] / max(self.window[1], 1)
                    self.history.append((self.step, mean))
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr_at(self.step - 1, self.cfg):.2e}")
                    self.window = [0.0, 0]
                if self.signalled:
                    self.on_signal()
                elif self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self.save()
            bar.close()
            self.save()
            if self.held is not None:   # it came during the last step: the checkpoint above is the final one
                signum, self.held = self.held, None
                self.deliver(signum)
        if distributed.is_main():
            (self.run_dir / "history.json").write_text(json.dumps({"history": self.history,
                                                                   "seconds_this_session": time.time() - start}))
        distributed.barrier()
        return self.history
