import pytest
import torch

from flowar.method import FlowARMethod
from flowar.model import FlowARConfig
from methods.base import TokenSpec
from methods.scales import block_causal_mask, doubling_scales, token_offsets

SMALL = dict(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1,
             decoder_num_heads=2, flow_depth=1, flow_width=32, flow_head_dim=16, attn_dropout=0.0, proj_dropout=0.0,
             num_flow_steps=4)


def make(latent_size=4, channels=4, classes=3, **kw):
    torch.manual_seed(0)
    return FlowARMethod(FlowARConfig.flat(**{**SMALL, **kw}), TokenSpec(channels, latent_size, classes))


def test_scale_schedule_and_mask():
    assert doubling_scales(16) == [1, 2, 4, 8, 16]
    assert token_offsets([1, 2, 4]) == [(0, 1), (1, 5), (5, 21)]
    m = block_causal_mask([1, 2])[0, 0]
    assert m.shape == (5, 5) and torch.isinf(m[0, 1:]).all() and (m[1:] == 0).all()
    with pytest.raises(ValueError, match="power of two"):
        doubling_scales(6)


def test_teacher_forced_loss_decreases_on_a_fixed_batch():
    m = make()
    x, y = torch.randn(16, 4, 4, 4), torch.randint(0, 3, (16,))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    noise = [torch.randn(16, s * s, 4) for s in m.model.scales]
    t = [torch.rand(16) for _ in m.model.scales]
    losses = []
    for _ in range(60):
        loss = m.loss(x, y, noise=noise, t=t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_loss_is_per_scale_weighted_sum():
    """The loss equals sum_k (s_k^2 / s_K^2) * mse_k, computed here scale by scale."""
    m = make().eval()
    x, y = torch.randn(4, 4, 4, 4), torch.randint(0, 3, (4,))
    noise = [torch.randn(4, s * s, 4) for s in m.model.scales]
    t = [torch.rand(4) for _ in m.model.scales]
    with torch.no_grad():
        total = m.loss(x, y, noise=noise, t=t)
        z, targets = m.model(x, y)
        expect = 0.0
        for k, ((b, e), tgt) in enumerate(zip(token_offsets(m.model.scales), targets)):
            x0 = m.model.to_tokens(tgt)
            tk = t[k].view(-1, 1, 1)
            xt = (1 - tk) * x0 + tk * noise[k]
            v = m.model.velocity(xt, t[k], z[:, b:e])
            expect += ((v - (noise[k] - x0)) ** 2).mean() * (e - b) / 16
    assert torch.allclose(total, expect, atol=1e-6)


def test_cached_semantics_match_teacher_forcing():
    m = make(latent_size=8).eval()
    x, y = torch.randn(3, 4, 8, 8), torch.randint(0, 3, (3,))
    with torch.no_grad():
        inputs = m.model.teacher_forcing_input(m.model.scale_targets(x))
        z_tf = m.model.semantics(inputs, y)
        ce = m.model.class_emb(y)
        m.model.enable_cache(True)
        step_in, parts = ce[:, None], []
        for k, (b, e) in enumerate(token_offsets(m.model.scales)):
            parts.append(m.model.semantics_step(step_in, ce, k))
            if k + 1 < len(m.model.scales):
                nxt = m.model.scales[k + 1] ** 2
                step_in = m.model.z_proj(inputs[:, e - 1:e - 1 + nxt])
        m.model.enable_cache(False)
    assert torch.allclose(torch.cat(parts, 1), z_tf, atol=1e-5)


def test_block_causality():
    """Changing the last scale's input leaves earlier scales' semantics unchanged."""
    m = make().eval()
    x, y = torch.randn(2, 4, 4, 4), torch.randint(0, 3, (2,))
    with torch.no_grad():
        inputs = m.model.teacher_forcing_input(m.model.scale_targets(x))
        a = m.model.semantics(inputs, y)
        inputs2 = inputs.clone()
        inputs2[:, 4:] += 1.0  # the inputs of the last scale (4x4)
        b = m.model.semantics(inputs2, y)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6) and not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("latent_size, batch, cfg", [(4, 1, 1.0), (4, 5, 2.0), (8, 3, 1.5), (2, 2, 3.0)])
def test_sampling_shapes(latent_size, batch, cfg):
    m = make(latent_size=latent_size, cfg=cfg).eval()
    out = m.generate(torch.randint(0, 3, (batch,)), torch.Generator().manual_seed(0))
    assert out.shape == (batch, 4, latent_size, latent_size) and torch.isfinite(out).all()


def test_same_seed_same_samples_and_batch_invariance():
    m = make(cfg=2.0).eval()
    labels = torch.tensor([0, 1, 2, 0])
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]
    a = m.generate(labels, gens())
    assert torch.equal(a, m.generate(labels, gens()))
    parts = torch.cat([m.generate(labels[:1], gens()[:1]), m.generate(labels[1:], gens()[1:])])
    assert torch.allclose(a, parts, atol=1e-5)  # per-image seeds: the batch split does not matter
    other = m.generate(labels, [torch.Generator().manual_seed(7 + i) for i in range(4)])
    assert not torch.allclose(a, other)


def test_unknown_sampler_setting():
    with pytest.raises(ValueError, match="num_flow_steps"):
        make().generate(torch.tensor([0]), torch.Generator(), temperature=2.0)


def test_one_seed_one_noise_at_any_cfg():
    """Guidance changes the velocity, not the noise: at cfg 1 and cfg 1.0001 the samples
    from the same per-image seeds are nearly the same."""
    m = make().eval()
    labels = torch.tensor([0, 2])
    gens = lambda: [torch.Generator().manual_seed(5 + i) for i in range(2)]
    a = m.generate(labels, gens(), cfg=1.0)
    b = m.generate(labels, gens(), cfg=1.0001)
    assert torch.allclose(a, b, atol=1e-2)


def test_rope_tables_equal_the_rotation_scale_by_scale():
    """One cached table over the concatenated scales gives, bit for bit, each scale's own
    rotation (x cos + rotate_pairs(x) sin at that grid's angles); new frequencies rebuild it."""
    from methods.layers.rope import RoPE2d, rotate_pairs
    rope, segments = RoPE2d(8, 16), [1, 4, 16]
    x = torch.randn(2, 3, 21, 16)
    out, start = rope(x, segments), 0
    for n in segments:
        a, xs = rope.angles(int(n ** 0.5), x.device), x[:, :, start:start + n]
        assert torch.equal(out[:, :, start:start + n], xs * a.cos() + rotate_pairs(xs) * a.sin())
        start += n
    rope.load_state_dict({"freqs": rope.freqs * 2})
    a = rope.angles(4, x.device)
    assert torch.equal(rope(x[:, :, 5:]), x[:, :, 5:] * a.cos() + rotate_pairs(x[:, :, 5:]) * a.sin())
    with pytest.raises(ValueError, match="square grids"):
        rope(x, [1, 20])
