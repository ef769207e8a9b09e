"""The suite against the official code, side by side in one process: the same configuration,
the same weights, the same sampler settings, timed in turn (``python -m benchmark bench
--official DIR`` runs this module once per method, in a child process, because the three
official repositories all import a top-level package called ``models``).

The official model is built by its own constructors (seeded, official init); its weights go into
the suite's model through the suite's official-checkpoint loaders. Then:

* sampling: images/s at batch 1 and at a large batch, tokens and decoding, each side with its
  own sampler and decoder, called the official way (one seeded generator, or FlowAR's replayed
  global-RNG noise); the images are compared (``parity_max_abs``; VAR family: same tokens);
* training: one AdamW step (forward, loss, backward, update) on the same batch.

The sides alternate within every repeat (drift hits both alike); the first round is a warm-up,
the figure the median. On CPU the official FlowAR code needs ``torch.Tensor.cuda`` to be a no-op
(patched in the child process only).

Shapes. ``tiny`` is the README's tiny preset made buildable by the official code, which
hard-codes parts of it: VAR's tokenizer is the official VQVAE (stride 16, ``ch`` 32) at 128 px,
FlexVAR's sampler needs 32-channel codes, FlowAR's sampler needs a 16 x 16 latent of 16
channels (the MAR KL-VAE at ``ch`` 32, 256 px); the transformers have the tiny preset's sizes.
``paper`` is VAR-d16, FlexVAR-d16, FlowAR-S with their full-size tokenizers.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmark.speed import _sync
from methods.adaln_ar import drop_labels
from methods.config import ConfigError

# The official repositories and how to recognise a checkout of each.
REPOSITORIES = {"var": ("FoundationVision/VAR", "models/var.py"), "flexvar": ("jiaosiyu1999/FlexVAR", "models/flexvar.py"),
                "flowar": ("wangqiang9/FlowAR", "models/flowar.py")}
TINY_VAR = dict(depth=4, embed_dim=128, num_heads=4)

SHAPES = {
    "var": {
        "tiny": dict(vae=dict(vocab_size=512, z_channels=16, ch=32), patch_nums=(1, 2, 3, 4, 6, 8), var=TINY_VAR,
                     sampler=dict(cfg=2.0, top_k=0, top_p=0.0), num_classes=8),
        "paper": dict(vae=dict(vocab_size=4096, z_channels=32, ch=160), patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                      var=dict(depth=16, embed_dim=1024, num_heads=16), sampler=dict(cfg=1.5, top_k=900, top_p=0.96),
                      num_classes=1000),
    },
    "flexvar": {
        "tiny": dict(vq=dict(codebook_size=512, codebook_embed_dim=32, z_channels=32, ch_mult=[1, 2, 4], ch=32),
                     patch_nums=(1, 2, 3, 4, 6, 8), var=TINY_VAR, sampler=dict(cfg=2.0, top_k=0, top_p=0.0, max_pn=8),
                     num_classes=8),
        "paper": dict(vq=dict(codebook_size=8912, codebook_embed_dim=32, z_channels=256, ch_mult=[1, 1, 2, 2, 4], ch=128),
                      patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), var=dict(depth=16, embed_dim=1024, num_heads=16),
                      sampler=dict(cfg=2.5, top_k=900, top_p=0.95, max_pn=16), num_classes=1000),
    },
    "flowar": {
        "tiny": dict(model=dict(encoder_embed_dim=128, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=128,
                                decoder_depth=2, decoder_num_heads=4, diffloss_d=2, diffloss_w=128),
                     vae_ch=32, sampler=dict(num_steps=12, cfg=4.0, guidance=0.9), num_classes=8),
        "paper": dict(model=dict(encoder_embed_dim=768, encoder_depth=6, encoder_num_heads=12, decoder_embed_dim=768,
                                 decoder_depth=6, decoder_num_heads=12, diffloss_d=2, diffloss_w=1024),
                      vae_ch=128, sampler=dict(num_steps=25, cfg=4.3, guidance=0.9), num_classes=1000),
    },
}


@dataclass
class Pair:
    """The two implementations of one method at one shape, behind the same calls."""
    sample: dict[str, Callable[[torch.Tensor, int], torch.Tensor]]     # side -> (labels, seed) -> images
    train_step: dict[str, Callable[[], float]]                         # side -> one AdamW step -> loss
    tokens: dict[str, Callable[[torch.Tensor, int], list]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


class OfficialCodeError(ConfigError):
    """The official code cannot be found or imported (a bad input, reported before any timing)."""


def find_checkout(method: str, root: str | Path) -> Path:
    """The official checkout of ``method`` in ``root``: root itself, or a folder below it
    holding the repository's marker file (``models/var.py`` ...)."""
    root = Path(root).expanduser().resolve()
    repo, marker = REPOSITORIES[method]
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for c in candidates:
        if (c / marker).is_file() and (method != "var" or not (c / "models/flexvar.py").exists()):
            return c
    raise OfficialCodeError(f"--official {root}: no checkout of {repo} there (looked for {marker} in it and in its "
                            f"sub-folders). Clone it: git clone https://github.com/{repo} {root}/{repo.split('/')[1]}")


def import_official(checkout: Path, *modules: str):
    """Import the official ``models.*`` modules of ``checkout`` (another checkout's, imported
    earlier in this process, are forgotten first: every repository calls its package ``models``)."""
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.") or n == "dist"]:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if not Path(origin).resolve().is_relative_to(checkout):
            del sys.modules[name]
    sys.path.insert(0, str(checkout))
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as err:
        raise OfficialCodeError(f"the official code in {checkout} needs {err.name!r}, which is not installed; "
                                f"pip install {'timm einops' if err.name in ('timm', 'einops') else err.name}") from None


def adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)


def step_with(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def official_tokens(module, official_sample: Callable) -> Callable[[torch.Tensor, int], list]:
    """The tokens an official VAR-family sampler draws, read from its ``sample_with_top_k_top_p_``
    (wrapped for the call: the original runs and its result is kept)."""
    def run(labels, seed):
        drawn, original = [], module.sample_with_top_k_top_p_
        module.sample_with_top_k_top_p_ = lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1]
        try:
            official_sample(labels, seed)
        finally:
            module.sample_with_top_k_top_p_ = original
        return [d[:, :, 0] for d in drawn]
    return run


# -- VAR -------------------------------------------------------------------------------------
def var_models(checkout: Path, s: dict, device: torch.device):
    """The official VQVAE + VAR (seeded, official init) and the suite's, loaded with their weights."""
    from var_baseline import official as suite
    vqvae_mod, var_mod = import_official(checkout, "models.vqvae", "models.var")
    pn = tuple(s["patch_nums"])
    torch.manual_seed(0)
    vae = vqvae_mod.VQVAE(**s["vae"], test_mode=True, share_quant_resi=4, v_patch_nums=pn).to(device)
    var = var_mod.VAR(vae, num_classes=s["num_classes"], **s["var"], drop_path_rate=0.0, shared_aln=False,
                      attn_l2_norm=True, patch_nums=pn, flash_if_available=True, fused_if_available=True).to(device)
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    tok = suite.build_vqvae(**s["vae"], share_quant_resi=4, v_patch_nums=pn)
    suite.load_vqvae(tok, {k: v.cpu() for k, v in vae.state_dict().items()})
    model = suite.build(tok.to(device), num_classes=s["num_classes"], **s["var"], drop_path_rate=0.0, attn_l2_norm=True)
    suite.load(model, {k: v.cpu() for k, v in var.state_dict().items()})
    return var_mod, vae, var, tok, model.to(device)


def var_pair(checkout: Path, shape: str, device: torch.device, train_batch: int) -> Pair:
    from var_baseline import official as suite
    s = SHAPES["var"][shape]
    pn = tuple(s["patch_nums"])
    var_mod, vae, var, tok, model = var_models(checkout, s, device)
    sampler = s["sampler"]

    def official_sample(labels, seed):
        var.eval()
        return var.autoregressive_infer_cfg(B=len(labels), label_B=labels.to(device), g_seed=seed, **sampler)

    def suite_sample(labels, seed):
        return suite.sample(model, tok, labels, seed, **sampler)

    V = s["vae"]["vocab_size"]
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, s["num_classes"], (train_batch,), generator=g).to(device)
    indices = [torch.randint(0, V, (train_batch, p * p), generator=g).to(device) for p in pn]
    opt_o, opt_s = adamw(var), adamw(model.network)

    def official_train():
        var.train()
        x = vae.quantize.idxBl_to_var_input(indices)
        logits = var(labels, x)
        return step_with(opt_o, F.cross_entropy(logits.reshape(-1, V), torch.cat(indices, 1).reshape(-1)))

    def suite_train():
        model.network.train()
        return step_with(opt_s, model.loss(torch.cat(indices, 1), labels))

    def suite_tokens(labels, seed):
        return suite.sample(model, tok, labels, seed, return_all=True, **sampler)["tokens"]

    return Pair({"official": official_sample, "suite": suite_sample}, {"official": official_train, "suite": suite_train},
                {"official": official_tokens(var_mod, official_sample), "suite": suite_tokens},
                {**sampler, "patch_nums": list(pn)})


# -- FlexVAR ---------------------------------------------------------------------------------
def flexvar_models(checkout: Path, s: dict, device: torch.device):
    """The official VQModel + FlexVAR (seeded, official init) and the suite's, loaded with their weights."""
    from flexvar import official as suite
    vq_mod, fv = import_official(checkout, "models.vq_llama", "models.flexvar")
    q, pn = s["vq"], tuple(s["patch_nums"])
    torch.manual_seed(0)
    vq = vq_mod.VQModel(vq_mod.ModelArgs(codebook_size=q["codebook_size"], codebook_embed_dim=q["codebook_embed_dim"],
                                         encoder_ch_mult=q["ch_mult"], decoder_ch_mult=q["ch_mult"],
                                         z_channels=q["z_channels"]))
    if q["ch"] != 128:   # the official classes at the width VQModel does not pass
        vq.encoder = vq_mod.Encoder(ch=q["ch"], ch_mult=q["ch_mult"], z_channels=q["z_channels"])
        vq.decoder = vq_mod.Decoder(ch=q["ch"], ch_mult=q["ch_mult"], z_channels=q["z_channels"])
    vq = vq.to(device).eval()
    var = fv.FlexVAR(vae_local=vq, num_classes=s["num_classes"], **s["var"], drop_path_rate=0.0, shared_aln=False,
                     attn_l2_norm=True, patch_nums=pn, flash_if_available=True, fused_if_available=True).to(device)
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    tok = suite.build_tokenizer(codebook_size=q["codebook_size"], codebook_embed_dim=q["codebook_embed_dim"],
                                z_channels=q["z_channels"], ch=q["ch"], ch_mult=q["ch_mult"], patch_nums=pn)
    suite.load_tokenizer(tok, {k: v.cpu() for k, v in vq.state_dict().items()})
    model = suite.build(tok.to(device), num_classes=s["num_classes"], **s["var"], drop_path_rate=0.0, attn_l2_norm=True,
                        patch_nums=pn)
    suite.load(model, {k: v.cpu() for k, v in var.state_dict().items()})
    return fv, vq, var, tok, model.to(device)


def flexvar_pair(checkout: Path, shape: str, device: torch.device, train_batch: int) -> Pair:
    from flexvar import official as suite
    s = SHAPES["flexvar"][shape]
    q, pn = s["vq"], tuple(s["patch_nums"])
    fv, vq, var, tok, model = flexvar_models(checkout, s, device)
    sampler = s["sampler"]

    def official_sample(labels, seed):
        var.eval()
        var.cond_drop_rate = 0.0
        raw = var.autoregressive_infer_cfg(vq, B=len(labels), label_B=labels.to(device), infer_patch_nums=pn,
                                           g_seed=seed, **sampler)
        return raw.clamp(-1, 1).add(1).mul(0.5)

    def suite_sample(labels, seed):
        return suite.sample(model, tok, labels, seed, infer_patch_nums=pn, **sampler)

    g = torch.Generator().manual_seed(1)
    L, V, C = sum(p * p for p in pn), q["codebook_size"], q["codebook_embed_dim"]
    labels = torch.randint(0, s["num_classes"], (train_batch,), generator=g).to(device)
    x = torch.randn(train_batch, L - 1, C, generator=g).to(device)
    targets = torch.randint(0, V, (train_batch, L), generator=g).to(device)
    opt_o, opt_s = adamw(var), adamw(model.network)

    def official_train():
        var.train()
        var.cond_drop_rate = 0.1
        return step_with(opt_o, F.cross_entropy(var(labels, x, pn).reshape(-1, V), targets.reshape(-1)))

    def suite_train():
        net = model.network.train()
        dropped = drop_labels(labels, 0.1, net.num_classes, None)
        return step_with(opt_s, F.cross_entropy(net(dropped, x, pn).reshape(-1, V), targets.reshape(-1)))

    def suite_tokens(labels, seed):
        return suite.sample(model, tok, labels, seed, infer_patch_nums=pn, return_all=True, **sampler)["tokens"]

    return Pair({"official": official_sample, "suite": suite_sample}, {"official": official_train, "suite": suite_train},
                {"official": official_tokens(fv, official_sample), "suite": suite_tokens},
                {**sampler, "patch_nums": list(pn)})


# -- FlowAR ----------------------------------------------------------------------------------
def flowar_models(checkout: Path, s: dict, device: torch.device):
    """The official FlowAR + MAR KL-VAE (seeded, official init) and the suite's, loaded with their weights."""
    from flowar import official as suite
    from methods.tokenizers.kl import load_mar_kl16, mar_config
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self   # the official code calls .cuda() on new tensors
    flowar_mod, vae_mod = import_official(checkout, "models.flowar", "models.vae")
    kwargs = dict(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, class_num=s["num_classes"],
                  label_drop_prob=0.1, attn_dropout=0.0, proj_dropout=0.0, mlp_ratio=4.0, **s["model"])
    torch.manual_seed(0)
    net = flowar_mod.FlowAR(**kwargs).to(device)
    vae = vae_mod.AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))
    if s["vae_ch"] != 128:
        vae.encoder = vae_mod.Encoder(ch=s["vae_ch"], ch_mult=(1, 1, 2, 2, 4), z_channels=16)
        vae.decoder = vae_mod.Decoder(ch=s["vae_ch"], ch_mult=(1, 1, 2, 2, 4), z_channels=16)
    vae = vae.to(device).eval()
    model = suite.build(**{k: v for k, v in kwargs.items() if k != "class_num"})
    suite.load(model, {k: v.cpu() for k, v in net.state_dict().items()})
    model.to(device)
    tok = load_mar_kl16({k: v.cpu() for k, v in vae.state_dict().items()}, mar_config(ch=s["vae_ch"])).to(device)
    return net, vae, tok, model


def flowar_pair(checkout: Path, shape: str, device: torch.device, train_batch: int) -> Pair:
    from flowar import official as suite
    from methods.tokenizers.kl import MAR_SCALING_FACTOR
    s = SHAPES["flowar"][shape]
    net, vae, tok, model = flowar_models(checkout, s, device)
    sm = s["sampler"]
    scales = list(net.scale)

    def official_sample(labels, seed):
        net.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            latent = net.sample_tokens(num_steps=sm["num_steps"], guidance=sm["guidance"], cfg=sm["cfg"],
                                       labels=labels.to(device))
            return vae.decode(latent / MAR_SCALING_FACTOR).clamp(-1, 1).add(1).mul(0.5)

    def suite_sample(labels, seed):
        torch.manual_seed(seed)   # the noise the official sampler draws, replayed (its first B rows are used)
        noise = [torch.randn(2 * len(labels), k * k, 16)[: len(labels)].to(device) for k in scales]
        with torch.no_grad():
            latent = suite.sample(model, labels.to(device), noise, num_steps=sm["num_steps"], cfg=sm["cfg"],
                                  guidance_high=sm["guidance"])
            return tok.decode(latent).clamp(-1, 1).add(1).mul(0.5)

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, s["num_classes"], (train_batch,), generator=g).to(device)
    latent = torch.randn(train_batch, 16, 16, 16, generator=g).to(device)
    opt_o, opt_s = adamw(net), adamw(model.network)

    def official_train():
        net.train()
        return step_with(opt_o, net(latent, labels))

    def suite_train():
        model.network.train()
        return step_with(opt_s, model.loss(latent, labels))

    return Pair({"official": official_sample, "suite": suite_sample}, {"official": official_train, "suite": suite_train},
                settings={**sm, "scales": scales})


PAIRS = {"var": var_pair, "flexvar": flexvar_pair, "flowar": flowar_pair}


# -- timing ----------------------------------------------------------------------------------
def alternate(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each side, the sides alternating; the first round is a warm-up."""
    times = {side: [] for side in calls}
    for r in range(repeats + 1):
        for side, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            if r:
                times[side].append(time.perf_counter() - start)
    return {side: statistics.median(t) for side, t in times.items()}


def parity(pair: Pair, num_classes: int, device: torch.device) -> dict:
    """Both sides on the same labels and seed: the largest pixel difference, and whether every
    token drawn is the same (VAR family)."""
    labels = torch.arange(2) % num_classes
    with torch.no_grad():
        images = {side: f(labels, 7).float().cpu() for side, f in pair.sample.items()}
    out = {"parity_max_abs": float((images["official"] - images["suite"]).abs().max())}
    if pair.tokens:
        with torch.no_grad():
            drawn = {side: f(labels, 7) for side, f in pair.tokens.items()}
        out["tokens_equal"] = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(drawn["official"], drawn["suite"]))
    return out


def compare(method: str, checkout: Path, shape: str, device: torch.device, batch_size: int, train_batch: int,
            repeats: int) -> list[dict]:
    """Rows (one per measurement) of suite against official for one method and shape."""
    pair = PAIRS[method](checkout, shape, device, train_batch)
    n = SHAPES[method][shape]["num_classes"]
    check = parity(pair, n, device)
    rows = []
    for what, batch in (("sample_bs1", 1), ("sample_large", batch_size)):
        labels = torch.arange(batch) % n
        with torch.no_grad():
            t = alternate({side: (lambda f=f, labels=labels: f(labels, 0)) for side, f in pair.sample.items()}, repeats, device)
        rows.append({"what": what, "batch_size": batch, "unit": "img/s", "official": batch / t["official"],
                     "suite": batch / t["suite"]})
    t = alternate(pair.train_step, repeats, device)
    rows.append({"what": "train_step", "batch_size": train_batch, "unit": "steps/s", "official": 1 / t["official"],
                 "suite": 1 / t["suite"]})
    for row in rows:
        row.update(method=method, shape=shape, implementation_pair="suite / official", ratio=row["suite"] / row["official"],
                   **check, settings=pair.settings, official_checkout=str(checkout))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one method, suite against official (run by `python -m benchmark bench`)")
    p.add_argument("--method", required=True, choices=sorted(PAIRS))
    p.add_argument("--official", required=True)
    p.add_argument("--shape", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    checkout = find_checkout(a.method, a.official)
    for row in compare(a.method, checkout, a.shape, torch.device(a.device), a.batch_size, a.train_batch, a.repeats):
        print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
