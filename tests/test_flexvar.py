"""FlexVAR and the flexvq tokenizer: training signal, any-scale sampling, random scale lists,
checkpoints, extrapolation settings, errors."""
import re

import pytest
import torch

from flexvar.method import FlexVARMethod, draw_scale_list, extend_scale_list
from flexvar.model import FlexVARConfig
from methods.base import NotSupportedByDesign, TokenSpec
from methods.tokenizers.flexvq import FlexVQConfig, FlexVQTokenizer

TRAIN = [1, 2, 3, 4]


def small_tokenizer(**kw):
    cfg = dict(vocab_size=32, code_dim=4, z_channels=8, ch=16, ch_mult=[1, 1, 1], num_res_blocks=1, norm_num_groups=2,
               patch_nums=TRAIN, steps=10, batch_size=8)
    return FlexVQTokenizer(FlexVQConfig(**{**cfg, **kw}))


def small_flexvar(tok=None, **kw):
    torch.manual_seed(0)
    tok = tok or small_tokenizer()
    cfg = FlexVARConfig.flat(**{**dict(depth=2, embed_dim=32, num_heads=2, top_k=0, top_p=0.0, cfg=1.5, max_pn=4), **kw})
    return FlexVARMethod(cfg, TokenSpec(tok.channels, TRAIN[-1], 5), tok), tok


def test_loss_decreases_on_a_fixed_batch():
    var, tok = small_flexvar(cond_drop_rate=0.0, random_scale_lists=False)
    features = tok.to_cache(torch.rand(8, 3, 16, 16) * 2 - 1)
    labels = torch.arange(8) % 5
    opt = torch.optim.AdamW(var.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = var.loss(features, labels)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


@pytest.mark.parametrize("sides", [[1, 2, 3, 4], [1, 2, 3, 5, 6]])
def test_kv_cached_steps_equal_teacher_forced_logits(sides):
    """Any scale list: one scale at a time through the cache sees what the mask allows."""
    var, tok = small_flexvar(init_adaln_gamma=1.0)
    var.eval()
    images = torch.rand(3, 3, sides[-1] * 4, sides[-1] * 4) * 2 - 1
    x_input, targets = tok.teacher_forcing(tok.features(images), sides)
    assert targets.shape == (3, sum(p * p for p in sides)) and x_input.shape == (3, targets.shape[1] - 1, 4)
    labels = torch.tensor([0, 4, 2])
    full = var.network(labels, x_input, sides)
    net, ce = var.network, var.network.class_emb(labels)
    pos = net.positions(sides)
    net.enable_cache(True)
    try:
        x, begin = ce[:, None] + net.pos_start + pos[:, :1], 0
        for k, pn in enumerate(sides):
            torch.testing.assert_close(net.step(x, ce), full[:, begin:begin + pn * pn], rtol=1e-4, atol=1e-5)
            begin += pn * pn
            if k + 1 < len(sides):
                nxt = sides[k + 1]
                x = net.word_embed(x_input[:, begin - 1:begin - 1 + nxt * nxt]) + pos[:, begin:begin + nxt * nxt]
    finally:
        net.enable_cache(False)


def test_sampling_any_list_is_seeded_and_batch_split_invariant():
    var, tok = small_flexvar()
    var.eval()
    labels = torch.tensor([0, 1, 2, 3])
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]
    for sides in ([1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8]):   # training list; longer and 2x larger
        a = var.generate(labels, gens(), infer_patch_nums=sides)
        assert a.shape == (4, 4, sides[-1], sides[-1])
        assert torch.equal(a, var.generate(labels, gens(), infer_patch_nums=sides))
        g = gens()
        halves = torch.cat([var.generate(labels[:2], g[:2], infer_patch_nums=sides),
                            var.generate(labels[2:], g[2:], infer_patch_nums=sides)])
        torch.testing.assert_close(halves, a, rtol=1e-5, atol=1e-6)
        assert tok.decode(a).shape == (4, 3, sides[-1] * 4, sides[-1] * 4)


def test_sides_outside_the_top_k_rule_are_greedy():
    """Sides above max_pn or outside topk_sides are drawn top-1: with no side allowed top-k,
    the generator no longer matters."""
    var, _ = small_flexvar(top_k=0)
    var.eval()
    labels = torch.tensor([1, 2])
    sides = [1, 2, 3, 4, 6, 8]
    draw = lambda seed, **kw: var.generate(labels, torch.Generator().manual_seed(seed), return_tokens=True,
                                           infer_patch_nums=sides, **kw)[1]
    for a, b in zip(draw(0, topk_sides=[]), draw(1, topk_sides=[])):
        assert torch.equal(a, b)
    free = [draw(seed) for seed in range(4)]   # sides 1-4 sampled freely: draws differ
    assert any(not torch.equal(f[3], free[0][3]) for f in free[1:])


def test_bad_scale_lists_are_refused():
    var, _ = small_flexvar()
    for bad in ([2, 3, 4], [1, 3, 2], [1]):
        with pytest.raises(Exception, match="scale list starts at 1"):
            var.generate(torch.tensor([0]), torch.Generator(), infer_patch_nums=bad)


def test_random_training_lists_follow_the_official_rules():
    official_list = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    g = torch.Generator().manual_seed(0)
    lists = [draw_scale_list(official_list, g) for _ in range(400)]
    for sides in lists:
        assert sides[:2] == [1, 2] and all(b > a for a, b in zip(sides, sides[1:]))
        assert sum(p * p for p in sides) <= 680
    assert 0.01 < sum(s == official_list for s in lists) / len(lists) < 0.12   # 5% the full list
    assert len({tuple(s) for s in lists}) > 100                                   # and varied otherwise
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [draw_scale_list(official_list, g1) for _ in range(5)] == [draw_scale_list(official_list, g2) for _ in range(5)]


def test_extrapolation_settings():
    var, _ = small_flexvar()
    assert var.evaluation_settings() == {}
    assert var.evaluation_settings(8) == {"infer_patch_nums": [1, 2, 3, 4, 6, 8]}
    assert var.evaluation_settings(None, [1, 2, 3, 4, 5]) == {"infer_patch_nums": [1, 2, 3, 4, 5]}
    with pytest.raises(ValueError, match="ends at 5"):
        var.evaluation_settings(8, [1, 2, 3, 4, 5])
    assert extend_scale_list([1, 2, 3, 4, 5, 6, 8, 10, 13, 16], 32)[-3:] == [16, 23, 32]   # the official 512 px list


def test_var_refuses_extrapolation_by_design():
    from var_baseline.method import VARMethod
    from var_baseline.model import VARConfig
    from methods.tokenizers.msvq import MSVQConfig, MSVQTokenizer
    tok = MSVQTokenizer(MSVQConfig(vocab_size=16, z_channels=4, ch=16, ch_mult=[1, 1], num_res_blocks=1,
                                   norm_num_groups=2, patch_nums=[1, 2, 4]))
    var = VARMethod(VARConfig(depth=1, embed_dim=16, num_heads=1), TokenSpec(4, 4, 3), tok)
    assert var.evaluation_settings() == {}
    with pytest.raises(NotSupportedByDesign, match="training scale list"):
        var.evaluation_settings(8)


def official_names(state, var):
    out = {re.sub(r"\.attn\.qkv\.weight$", ".attn.mat_qkv.weight", k): v for k, v in state.items()}
    for k, v in state.items():
        if k.endswith(".attn.q_bias"):
            out[k.replace("q_bias", "zero_k_bias")] = torch.zeros_like(v)
    out["attn_bias_for_masking"] = torch.zeros(1, 1, 7, 7)   # any list: ignored, as the official evaluation does
    return out


def test_official_layout_checkpoint_loads_and_bad_ones_are_clear(tmp_path):
    var, tok = small_flexvar()
    path = tmp_path / "FlexVARd2.pth"
    torch.save({"trainer": {"var_wo_ddp": official_names(var.network.state_dict(), var)}}, path)
    fresh, _ = small_flexvar(tok)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_weights(path)
    for k, v in var.network.state_dict().items():
        assert torch.equal(fresh.network.state_dict()[k], v), k
    deeper, _ = small_flexvar(tok, depth=3)
    torch.save(official_names(deeper.network.state_dict(), deeper), tmp_path / "d3.pth")
    with pytest.raises(RuntimeError, match=r"depth 3.*depth 2.*flexvar.depth=3"):
        var.load_weights(tmp_path / "d3.pth")
    (tmp_path / "bad.pth").write_bytes(path.read_bytes()[:300])
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        var.load_weights(tmp_path / "bad.pth")


def test_tokenizer_trains_reconstructs_at_two_sizes_and_reports_usage():
    """Multi-scale training: the decoder renders a code map of any side, so the 2x map of a
    2x image reconstructs it too."""
    from benchmark.datasets.shapes import Shapes
    torch.manual_seed(0)
    tok = small_tokenizer(vocab_size=64, restart_every=20)
    data = Shapes(resolution=16, num_classes=4, variant="easy", size=512, seed=0, split="train")
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    tok.train()
    for step in range(250):
        loss = tok.loss(data.render(torch.arange(step * 32, step * 32 + 32) % 512)[0], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    for side in (16, 32):
        test = Shapes(resolution=side, num_classes=4, variant="easy", size=512, seed=0, split="test").render(torch.arange(64))[0]
        with torch.no_grad():
            recon = tok.decode(tok.encode(test)).clamp(-1, 1)
        psnr = float(10 * torch.log10(4 / (recon - test).pow(2).mean()))
        flat = float(10 * torch.log10(4 / (test.mean((2, 3), keepdim=True) - test).pow(2).mean()))
        assert recon.shape == test.shape and psnr > flat + 2, (side, psnr, flat)
    indices = tok.img_to_indices(test, [1, 2, 3, 5, 8])
    assert [i.shape[1] for i in indices] == [1, 4, 9, 25, 64] and all(0 <= int(i.min()) and int(i.max()) < 64 for i in indices)
    usage = tok.usage(tok.to_cache(test[:, :, ::2, ::2]))
    assert usage["codebook_usage_pct"] > 20 and len(usage["codebook_usage_per_scale_pct"]) == len(TRAIN)
