import torch
from torch import nn


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotation by 90 degrees of each pair."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


class RoPE2d(nn.Module):
    """2-D rotary position embedding for a square grid of tokens (EVA-02 style, as FlowAR uses).

    Half of each head's channels rotate with the row index, half with the column index.
    Positions are normalised to a ``reference_size`` grid — position i of an n x n grid sits
    at i / n * reference_size — so every scale of a pyramid spans the same range of angles.
    That is why one RoPE serves the 1x1 ... 16x16 scales of FlowAR.

    ``dim`` is half the head dimension; its ``dim // 2`` frequencies are each used for a
    pair of channels per axis (EVA-02's ``VisionRotaryEmbeddingFast``, theta 10000).
    """

    def __init__(self, dim: int, reference_size: int = 16, theta: float = 10000.0):
        super().__init__()
        self.reference_size = reference_size
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self._tables: dict = {}  # (segments, device, dtype, ...) -> (cos, signed sin)

    def angles(self, side: int, device: torch.device) -> torch.Tensor:
        """Rotation angles (side * side, head_dim) for a row-major side x side grid."""
        pos = torch.arange(side, device=device) / side * self.reference_size
        f = torch.outer(pos, self.freqs.to(device)).repeat_interleave(2, dim=-1)  # (side, dim)
        rows = f[:, None, :].expand(side, side, -1)
        cols = f[None, :, :].expand(side, side, -1)
        return torch.cat([rows, cols], dim=-1).reshape(side * side, -1)

    def tables(self, segments: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        """cos and sign-folded sin (N, head_dim) of the concatenated grids, built once per
        segment list: every block and every step of training reuses them."""
        # Tables made under inference_mode cannot be saved for backward: keyed apart.
        key = (segments, device, dtype, self.freqs._version, torch.is_inference_mode_enabled())
        if key not in self._tables:
            grids = []
            for n in segments:
                side = int(round(n ** 0.5))
                if side * side != n:
                    raise ValueError(f"RoPE2d needs square grids of tokens; got a segment of {n} tokens")
                grids.append(self.angles(side, device))
            a = torch.cat(grids)
            # rotate_pairs(x) * sin == swap_pairs(x) * (sin with even channels negated): exact.
            sign = torch.tensor([-1.0, 1.0], device=device).repeat(a.shape[-1] // 2)
            self._tables[key] = (a.cos().to(dtype), (a.sin() * sign).to(dtype))
        return self._tables[key]

    def forward(self, x: torch.Tensor, segments: list[int] | None = None) -> torch.Tensor:
        """Rotate x (B, heads, N, head_dim). ``segments`` splits N into square grids (one per
        scale), each rotated by its own grid positions; by default N is one grid."""
        cos, sin = self.tables(tuple(segments or [x.shape[2]]), x.device, x.dtype)
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
        return x * cos + swapped * sin
