import numpy as np
import pytest
import torch

from benchmark.datasets.shapes import Shapes
from methods.tokenizers.kl import KLConfig, KLTokenizer


def psnr(a, b):
    mse = ((a - b) / 2).pow(2).mean()
    return float(10 * torch.log10(1 / mse))


def test_kl_round_trip_after_training():
    torch.manual_seed(0)
    tok = KLTokenizer(KLConfig(latent_channels=4, block_out_channels=[16, 16], norm_num_groups=2))
    data = Shapes(resolution=16, num_classes=4, size=2048)
    test, _ = Shapes(resolution=16, num_classes=4, split="test").render(np.arange(64))
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    before = psnr(tok.decode(tok.encode(test)).clamp(-1, 1).detach(), test)
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        x, _ = data.render(np.arange(step * 32, step * 32 + 32) % 2048)
        loss = tok.loss(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        z = tok.encode(test)
        after = psnr(tok.decode(z).clamp(-1, 1), test)
    print(f"KL tokenizer PSNR after 150 steps: {after:.1f} dB (untrained {before:.1f} dB)")
    assert z.shape == (64, 4, 8, 8)
    assert after > 20 and after > before + 8


def test_scaling_factor_applies_both_ways():
    tok = KLTokenizer(KLConfig(latent_channels=4, block_out_channels=[16, 16], norm_num_groups=2)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, da = tok.encode(x), tok.decode(tok.encode(x))
        tok.scaling_factor.fill_(3.0)
        b, db = tok.encode(x), tok.decode(tok.encode(x))
    assert torch.allclose(b, 3 * a, atol=1e-5) and torch.allclose(da, db, atol=1e-5)


def test_posterior_sampling_is_seeded():
    tok = KLTokenizer(KLConfig(latent_channels=4, block_out_channels=[16, 16], norm_num_groups=2)).eval()
    moments = tok.moments(torch.zeros(2, 3, 16, 16)).detach()
    a = tok.latents_from_moments(moments, torch.Generator().manual_seed(1))
    b = tok.latents_from_moments(moments, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, tok.latents_from_moments(moments, sample=False))


def test_loads_a_diffusers_folder(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(latent_channels=4, block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=2, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    tok = KLTokenizer.from_pretrained(tmp_path / "vae").eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expect = vae.encode(x).latent_dist.mean * 0.5
        assert torch.allclose(tok.encode(x), expect, atol=1e-6)
    assert tok.stride == 2 and tok.channels == 4


def test_missing_pretrained_folder_is_a_clear_error(tmp_path):
    import pytest

    from benchmark.config import ConfigError, load_config
    with pytest.raises(FileNotFoundError, match="config.json"):
        KLTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="kl.pretrained"):
        load_config("tiny", [f"kl.pretrained={tmp_path}/nope"])


@pytest.mark.parametrize("method", ["flowar", "var", "flexvar"])
def test_tokenizer_training_is_reproducible(tmp_path, method):
    """Same config, same tokenizer, whatever ran before in the process (its init is seeded)."""
    from benchmark import stages
    from benchmark.config import load_config
    from methods.checkpoints import load_safetensors
    states = []
    for run in range(2):
        torch.manual_seed(run)   # a different global RNG state each time
        cfg = load_config("smoke", [f"paths.cache={tmp_path}/{run}/cache", f"paths.runs={tmp_path}/{run}/runs"])
        states.append(load_safetensors(stages.train_tokenizer(cfg, method) / "tokenizer.safetensors"))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("kind", ["msvq", "flexvq"])
def test_vq_warm_up_then_codes_start_at_encoder_features(kind):
    """``quantize_after``: the first steps train an autoencoder (the codebook untouched), and
    the step that ends the warm-up moves every code onto a feature vector of that batch."""
    from methods.config import ConfigError
    from methods.tokenizers.flexvq import FlexVQConfig, FlexVQTokenizer
    from methods.tokenizers.msvq import MSVQConfig, MSVQTokenizer
    from methods.tokenizers.vq import scale_vectors
    common = dict(vocab_size=32, ch=16, ch_mult=[1, 1, 1], num_res_blocks=1, norm_num_groups=2, patch_nums=[1, 2, 4],
                  steps=10, batch_size=8, quantize_after=3)
    torch.manual_seed(0)
    tok = (MSVQTokenizer(MSVQConfig(z_channels=4, using_sa=False, using_mid_sa=False, **common)) if kind == "msvq"
           else FlexVQTokenizer(FlexVQConfig(code_dim=4, z_channels=8, **common))).train()
    codebook = tok.codebook().detach().clone()
    images, _ = Shapes(resolution=16, size=8).render(np.arange(8))
    for step in range(3):
        if step == 2:
            candidates = scale_vectors(tok.features(images).detach(), tok.patch_nums)
        tok.loss(images, torch.Generator().manual_seed(step)).backward()
        if step < 2:
            assert torch.equal(tok.codebook().detach(), codebook)    # warm-up: no quantization
    after = tok.codebook().detach()
    if kind == "flexvq":   # its codebook is used l2-normalised
        candidates = torch.nn.functional.normalize(candidates, dim=-1)
    nearest = torch.cdist(after, candidates).min(1).values
    assert nearest.max() < 1e-3                                      # every code is a feature vector
    with pytest.raises(ConfigError, match="quantize_after=10 must be below"):
        MSVQConfig(**{**common, "quantize_after": 10}).check("msvq")
