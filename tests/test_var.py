"""VAR and the msvq tokenizer: training signal, KV-cached sampling, seeding, checkpoints, errors."""
import re

import pytest
import torch

from methods.tokenizers.msvq import MSVQConfig, MSVQTokenizer
from var_baseline import official
from var_baseline.method import VARMethod
from var_baseline.model import VARConfig

PATCH_NUMS = [1, 2, 3, 4]


def small_tokenizer(**kw):
    cfg = dict(vocab_size=32, z_channels=4, ch=16, ch_mult=[1, 1, 1], num_res_blocks=1, norm_num_groups=2,
               using_sa=True, using_mid_sa=True, patch_nums=PATCH_NUMS, steps=10, batch_size=8)
    return MSVQTokenizer(MSVQConfig(**{**cfg, **kw}))


def small_var(tok=None, **kw):
    torch.manual_seed(0)
    tok = tok or small_tokenizer()
    from methods.base import TokenSpec
    cfg = VARConfig.flat(**{**dict(depth=2, embed_dim=32, num_heads=2, top_k=0, top_p=0.0, cfg=1.5), **kw})
    return VARMethod(cfg, TokenSpec(tok.channels, PATCH_NUMS[-1], 5), tok), tok


def test_loss_decreases_on_a_fixed_batch():
    var, tok = small_var(cond_drop_rate=0.0)
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    tokens = tok.to_cache(images)
    labels = torch.arange(8) % 5
    opt = torch.optim.AdamW(var.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = var.loss(tokens, labels)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_kv_cached_steps_equal_teacher_forced_logits():
    """Feeding one scale at a time through the cache sees exactly what the block-causal mask
    lets teacher-forced training see."""
    var, tok = small_var(init_adaln_gamma=1.0)
    var.eval()
    tokens = tok.to_cache(torch.rand(3, 3, 16, 16) * 2 - 1)
    labels = torch.tensor([0, 4, 2])
    x_input = tok.quantize.teacher_forcing_input(var.split(tokens))
    full = var.network(labels, x_input)
    net, ce = var.network, var.network.class_emb(labels)
    net.enable_cache(True)
    try:
        x, begin = net.first_input(ce), 0
        for k, (b, e) in enumerate(net.begin_ends):
            step = net.step(x, ce)
            torch.testing.assert_close(step, full[:, b:e], rtol=1e-4, atol=1e-5)
            if k + 1 < len(net.patch_nums):
                pn = net.patch_nums[k + 1]
                b2, e2 = net.begin_ends[k + 1]
                inp = x_input[:, b2 - 1:e2 - 1].transpose(1, 2).reshape(3, -1, pn, pn)
                x = net.next_input(inp, k + 1)
    finally:
        net.enable_cache(False)


def test_same_seed_same_samples_and_batch_split_invariance():
    var, tok = small_var()
    var.eval()
    labels = torch.tensor([0, 1, 2, 3])
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]
    a = var.generate(labels, gens())
    b = var.generate(labels, gens())
    assert torch.equal(a, b)
    g = gens()
    halves = torch.cat([var.generate(labels[:2], g[:2]), var.generate(labels[2:], g[2:])])
    torch.testing.assert_close(halves, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a, var.generate(labels, [torch.Generator().manual_seed(7 + i) for i in range(4)]))


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.5), dict(more_smooth=True)])
def test_sampler_settings_run_and_tokens_respect_top_k(kw):
    var, tok = small_var()
    var.eval()
    f_hat, tokens = var.generate(torch.tensor([1, 2]), torch.Generator().manual_seed(0), return_tokens=True, **kw)
    assert f_hat.shape == (2, tok.channels, 4, 4) and torch.isfinite(f_hat).all()
    for t, pn in zip(tokens, PATCH_NUMS):
        assert t.shape == (2, pn * pn) and int(t.min()) >= 0 and int(t.max()) < 32


def test_top_k_keeps_only_k_tokens():
    from methods.sampling import top_k_top_p_
    logits = torch.randn(2, 5, 50)
    kept = torch.isfinite(top_k_top_p_(logits.clone(), top_k=7))
    assert (kept.sum(-1) == 7).all()
    kept = torch.isfinite(top_k_top_p_(logits.clone(), top_p=1e-6))   # the most likely token always stays
    assert (kept.sum(-1) == 1).all()


def official_names(state):
    """Our state dict -> the official layout (mat_qkv, zero_k_bias and the derived buffers)."""
    out = {re.sub(r"\.attn\.qkv\.weight$", ".attn.mat_qkv.weight", k): v for k, v in state.items()}
    for k, v in state.items():
        if k.endswith(".attn.q_bias"):
            out[k.replace("q_bias", "zero_k_bias")] = torch.zeros_like(v)
    return out


def test_official_layout_checkpoint_loads_from_a_file(tmp_path):
    var, tok = small_var()
    net = var.network
    state = official_names(net.state_dict())
    state["lvl_1L"], state["attn_bias_for_masking"] = net.lvl_1L, net.attn_bias_for_masking
    path = tmp_path / "var_d2.pth"
    torch.save(state, path)
    fresh, _ = small_var(tok)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_weights(path)
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.network.state_dict()[k], v), k


def test_wrong_depth_and_corrupt_checkpoints_are_clear(tmp_path):
    var, tok = small_var()
    deeper, _ = small_var(tok, depth=3)
    path = tmp_path / "var_d3.pth"
    torch.save(official_names(deeper.network.state_dict()), path)
    with pytest.raises(RuntimeError, match=r"depth 3.*depth 2.*var.depth=3"):
        var.load_weights(path)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        var.load_weights(bad)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        var.load_weights(tmp_path / "missing.pth")
    other = official_names(var.network.state_dict())
    other["head.weight"] = torch.zeros(7, 32)
    with pytest.raises(RuntimeError, match="shape mismatch.*head.weight"):
        official.load(var, other)


def test_var_needs_a_multiscale_tokenizer_with_the_right_last_scale():
    from methods.base import TokenSpec
    with pytest.raises(ValueError, match="msvq"):
        VARMethod(VARConfig(depth=1, embed_dim=16, num_heads=1), TokenSpec(4, 4, 5), None)
    with pytest.raises(ValueError, match="patch_nums"):
        VARMethod(VARConfig(depth=1, embed_dim=16, num_heads=1), TokenSpec(4, 8, 5), small_tokenizer())


def test_tokenizer_trains_round_trips_and_reports_usage():
    """300 steps on the embedded shapes (measured: 17.8 dB PSNR; a flat per-image mean colour
    scores 13.3 dB): reconstructions well above the trivial one, every
    scale's indices in range, codebook usage reported and dead codes restarted."""
    from benchmark.datasets.shapes import Shapes
    torch.manual_seed(0)
    tok = small_tokenizer(vocab_size=64, restart_every=20)
    data = Shapes(resolution=16, num_classes=4, variant="easy", size=512, seed=0, split="train")
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    tok.train()
    for step in range(300):
        images = data.render(torch.arange(step * 32, step * 32 + 32) % 512)[0]
        loss = tok.loss(images, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    test = Shapes(resolution=16, num_classes=4, variant="easy", size=512, seed=0, split="test").render(torch.arange(64))[0]
    with torch.no_grad():
        recon = tok.decode(tok.encode(test)).clamp(-1, 1)
    psnr = float(10 * torch.log10(4 / (recon - test).pow(2).mean()))
    flat = float(10 * torch.log10(4 / (test.mean((2, 3), keepdim=True) - test).pow(2).mean()))
    assert psnr > flat + 3, (psnr, flat)
    tokens = tok.to_cache(test)
    for t, pn in zip(tok.split(tokens), PATCH_NUMS):
        assert t.shape == (64, pn * pn) and int(t.min()) >= 0 and int(t.max()) < 64
    usage = tok.usage(tokens)
    assert usage["codebook_usage_pct"] > 20 and usage["dead_codes"] < 64 * 0.8
    assert len(usage["codebook_usage_per_scale_pct"]) == len(PATCH_NUMS)


def test_tokenizer_rejects_images_of_the_wrong_size():
    with pytest.raises(ValueError, match="use 16 px images"):
        small_tokenizer().encode(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("preset,millions", [("var_d16", 310), ("var_d20", 600), ("var_d24", 1000), ("var_d30", 2000)])
def test_official_presets_have_the_papers_sizes(preset, millions):
    """The released VAR-d16/20/24/30 have 310M / 600M / 1.0B / 2.0B parameters (VAR README)."""
    from benchmark.config import load_config, section
    from methods.base import TokenSpec
    cfg = load_config(preset)
    with torch.device("meta"):
        tok = MSVQTokenizer(section(cfg, "msvq"))
        var = VARMethod(section(cfg, "var"), TokenSpec(32, 16, 1000), tok)
    n = sum(p.numel() for p in var.network.parameters()) / 1e6
    assert abs(n - millions) / millions < 0.05, n


def test_official_tokenizer_file_loads_and_a_mismatched_one_is_refused(tmp_path):
    """An official-layout VQVAE checkpoint (the fixture's weights, saved as the official
    vae_ch160v4096z32.pth is: a bare state dict) through the real file path."""
    import json
    from pathlib import Path
    from safetensors.torch import load_file
    fixtures = Path(__file__).parent / "fixtures" / "var"
    meta = json.loads((fixtures / "shared_l2.json").read_text())
    tensors = {**{k: v.float() for k, v in load_file(str(fixtures / "vae_body.safetensors")).items()},
               **load_file(str(fixtures / "shared_l2.safetensors"))}
    sd = {k[4:]: v for k, v in tensors.items() if k.startswith("vae.")}
    path = tmp_path / "vae.pth"
    torch.save(sd, path)
    kw = meta["vqvae_kwargs"]
    cfg = MSVQConfig(vocab_size=kw["vocab_size"], z_channels=kw["z_channels"], ch=kw["ch"],
                     share_quant_resi=kw["share_quant_resi"], patch_nums=kw["v_patch_nums"])
    tok = MSVQTokenizer.from_pretrained(path, cfg)
    assert torch.equal(tok.quantize.embedding.weight, sd["quantize.embedding.weight"])
    with pytest.raises(RuntimeError, match=r"vae.pth does not fit.*vocab_size"):
        MSVQTokenizer.from_pretrained(path, MSVQConfig(**{**cfg.__dict__, "vocab_size": 128}))
    with pytest.raises(RuntimeError, match="unexpected key"):
        official.load_vqvae(official.build_vqvae(**kw), {**sd, "quantize.something": torch.zeros(1)})


def test_per_image_draws_follow_the_probabilities_and_skip_masked_tokens():
    from methods.sampling import multinomial
    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0]).expand(1, 20000, 6).contiguous()
    idx = multinomial(probs, [torch.Generator().manual_seed(0)])
    freq = torch.bincount(idx.flatten(), minlength=6).float() / idx.numel()
    assert freq[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(freq, probs[0, 0], atol=0.015, rtol=0)
