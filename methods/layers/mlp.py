import torch
from torch import nn


class GatedMLP(nn.Module):
    """Gated MLP: fc2(act(fc1_g(x)) * fc1_x(x)) (Shazeer, 2020, "GLU Variants Improve
    Transformer"). Parameter names follow timm's ``SwiGLU`` so official checkpoints load;
    FlowAR passes GELU as the activation, which makes it a GEGLU."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.SiLU, drop: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden, bias=bias)
        self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        self.act = act()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1_g(x)) * self.fc1_x(x))))


class MLP(nn.Module):
    """Two-layer MLP fc2(act(fc1(x))) with tanh-approximated GELU (GPT-2 / VAR's ``FFN``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))
