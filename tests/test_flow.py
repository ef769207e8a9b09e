import torch

from methods.flow import euler_sample, flow_matching_loss, flowar_time_grid
from methods.guidance import guide, guide_logits


def test_time_grid_matches_the_official_rule():
    g = flowar_time_grid(25)
    assert len(g) == 25 and g[0] == 1 and g[-1] == 0 and g.dtype == torch.float64
    assert torch.isclose(g[11], torch.tensor(0.3, dtype=torch.float64)) and g[12] == 0.25
    assert torch.allclose(flowar_time_grid(50), torch.linspace(1, 0, 51, dtype=torch.float64))


def test_euler_is_exact_on_straight_paths():
    """For x_t = (1-t) x0 + t eps the true velocity is eps - x0; integrating it from the noise
    must land on x0 exactly, whatever the grid."""
    x0, eps = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    v = lambda x, t: eps - x0
    out = euler_sample(v, eps, flowar_time_grid(12))
    assert torch.allclose(out.float(), x0, atol=1e-6)


def test_guidance_interval_and_mixing():
    v = torch.tensor([[3.0], [1.0]])
    assert torch.equal(guide(v, 2.0), torch.tensor([[5.0]]))
    assert torch.equal(guide_logits(v, 1.0), torch.tensor([[5.0]]))   # the same rule, weight = scale - 1
    calls = []

    def velocity(x, t):
        calls.append((x.shape[0], float(t[0])))
        return torch.zeros_like(x)

    euler_sample(velocity, torch.zeros(4, 1, 1), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),
                 cfg_scale=2.0, guidance_high=0.6)
    assert calls == [(4, 1.0), (4, 0.5)]


def test_loss_zero_for_the_true_velocity():
    x0, eps, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.rand(2)
    assert torch.allclose(flow_matching_loss(lambda x, tt: eps - x0, x0, eps, t), torch.zeros(2))
