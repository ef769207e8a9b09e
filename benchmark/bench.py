"""``python -m benchmark bench``: how fast each method samples and trains, alone and next to the
official code, and how its cost grows with the token count.

    python -m benchmark bench                                   # tiny shapes, this machine
    python -m benchmark bench --official ~/official             # + the official code side by side
    python -m benchmark bench --shapes tiny paper device=cuda   # + VAR-d16 / FlexVAR-d16 / FlowAR-S sizes
    python -m benchmark bench --shapes paper --dtype bf16 --batch-size 64 device=cuda

Measured per method and shape (random weights: speed does not depend on their values):
  * sampling images/s at batch 1 and at ``--batch-size`` (tokens and decoding, the harness's
    own path: ``speed.sampling_cost``, one image per seeded generator; ``--dtype bf16``: autocast);
  * a training step (the method's loss on tokenized random images, backward, AdamW) at
    ``--train-batch``;
  * the scaling series (``--series``): token generation alone at latent sides 8, 16 and 32,
    and over scale lists of growing length, against the token count sum(side^2);
  * with ``--official DIR``: the same configuration, weights and sampler in the official code,
    timed in turn with the suite in one child process per method (benchmark/official_bench.py),
    with the outputs compared and the ratio suite / official.
The first call of each measurement is a warm-up, the figure the median of ``--repeats``.
Writes ``<out>/bench.json`` (rows, machine, versions, settings), ``bench.csv``, ``bench.md``
and ``scaling.png``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmark import distributed
from benchmark.build import build_method
from benchmark.config import load_config, section
from benchmark.io import atomic_write, write_text
from benchmark.provenance import provenance
from benchmark.speed import _sync, sampling_cost
from methods.config import ConfigError
from methods.registry import TOKENIZERS, build

METHODS = ("flowar", "var", "flexvar")
SHAPES = {"tiny": {"flowar": "tiny", "var": "tiny", "flexvar": "tiny"},
          "paper": {"flowar": "flowar_small", "var": "var_d16", "flexvar": "flexvar_d16"}}
# Scale lists of the series: VAR-family lists ending at each latent side (the official 256 px
# list at 16), and lists of growing length at side 16. FlowAR's scales double up to the side.
VAR_LISTS = {8: [1, 2, 3, 4, 6, 8], 16: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
             32: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 24, 28, 32]}
STEP_LISTS = [[1, 2, 4, 16], [1, 2, 4, 8, 16], [1, 2, 3, 4, 6, 8, 16], [1, 2, 3, 4, 6, 8, 12, 16],
              [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]]


def tokens_of(scales) -> int:
    return sum(s * s for s in scales)


def build_pair(method: str, preset: str, overrides: list[str]):
    """(cfg, tokenizer, method) at a preset's size with random weights."""
    cfg = load_config(preset, list(overrides))
    device = distributed.resolve_device(cfg.device)
    name = cfg[method].tokenizer
    tcfg = section(cfg, name)
    tcfg.pretrained = None
    torch.manual_seed(0)
    tok = build(TOKENIZERS, name, cfg=tcfg).to(device).eval()
    model = build_method(cfg, method, tok).to(device).eval()
    return cfg, tok, model, device


def median_seconds(call, repeats: int, device: torch.device) -> float:
    times = []
    for r in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        if r:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_seconds(cfg, tok, model, device, batch: int, repeats: int) -> float:
    """One training step as the trainer runs it on cached tokens: loss, backward, AdamW."""
    g = torch.Generator().manual_seed(0)
    side = cfg.data.resolution
    images = torch.rand(batch, 3, side, side, generator=g).mul(2).sub(1).to(device)
    with torch.no_grad():
        inputs = tok.from_cache(tok.to_cache(images))
    labels = (torch.arange(batch) % cfg.data.num_classes).to(device)
    opt = torch.optim.AdamW(model.network.parameters(), lr=1e-4, weight_decay=0.05)
    model.network.train()

    def step():
        loss = model.loss(inputs, labels, torch.Generator(device=device).manual_seed(0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = median_seconds(step, repeats, device)
    model.network.eval()
    return seconds


def suite_rows(method: str, shape: str, batch_size: int, train_batch: int, repeats: int, overrides,
               dtype: str = "fp32") -> list[dict]:
    preset = SHAPES[shape][method]
    cfg, tok, model, device = build_pair(method, preset, overrides)
    cost, protocol = sampling_cost(model, tok, cfg.data.num_classes, batch_size, device, repeats, dtype)
    train = train_step_seconds(cfg, tok, model, device, train_batch, repeats)
    common = dict(method=method, shape=shape, preset=preset, implementation="suite", device=str(device),
                  resolution=cfg.data.resolution, tokens=tokens_of(model.generated_scales()),
                  params_m=cost["params_m"], gflops_per_image=cost["gflops_per_image"], nfe=cost["nfe"],
                  sampler=model.sampler_settings(), threads=protocol["threads"], dtype=dtype)
    return [dict(common, what="sample_bs1", batch_size=1, value=cost["throughput_bs1_img_s"], unit="img/s"),
            dict(common, what="sample_large", batch_size=batch_size, value=cost["throughput_img_s"], unit="img/s"),
            dict(common, what="train_step", batch_size=train_batch, value=1 / train, unit="steps/s")]


def series_configs(method: str) -> list[tuple[str, int, list[int], list[str]]]:
    """(series, latent side, scales, overrides) of the tiny model at each point of the series."""
    out = []
    for side in (8, 16, 32):
        res = side * 4   # the tiny tokenizers have stride 4
        if method == "flowar":
            out.append(("latent side", side, [2 ** i for i in range(side.bit_length())], [f"data.resolution={res}"]))
        else:
            tok = "msvq" if method == "var" else "flexvq"
            lst = VAR_LISTS[side]
            out.append(("latent side", side, lst, [f"data.resolution={res}", f"{tok}.patch_nums=[{','.join(map(str, lst))}]"]))
    if method != "flowar":   # FlowAR's scale list is fixed by the latent side
        tok = "msvq" if method == "var" else "flexvq"
        for lst in STEP_LISTS:
            out.append(("scales", 16, lst, ["data.resolution=64", f"{tok}.patch_nums=[{','.join(map(str, lst))}]"]))
    return out


def series_rows(method: str, batch: int, repeats: int, overrides) -> list[dict]:
    """Token generation alone (no decoding) at batch ``batch`` for every point of the series."""
    rows = []
    for series, side, scales, extra in series_configs(method):
        cfg, _, model, device = build_pair(method, "tiny", [*overrides, *extra])
        labels = (torch.arange(batch) % cfg.data.num_classes).to(device)

        def generate(model=model, labels=labels):
            return model.generate(labels, [torch.Generator().manual_seed(i) for i in range(batch)])

        with torch.no_grad():
            seconds = median_seconds(generate, repeats, device)
        rows.append(dict(method=method, shape="tiny", implementation="suite", what=f"series: {series}", side=side,
                         scales=scales, num_scales=len(scales), tokens=tokens_of(scales), batch_size=batch,
                         value=seconds / batch * 1000, unit="ms/img (tokens only)", device=str(device)))
    return rows


def official_rows(method: str, root: str, shape: str, device: str, batch_size: int, train_batch: int,
                  repeats: int) -> list[dict]:
    """The official comparison for one method, in a child process (the repositories' ``models``
    packages clash); its errors come back as this command's."""
    cmd = [sys.executable, "-m", "benchmark.official_bench", "--method", method, "--official", str(root), "--shape",
           shape, "--device", device, "--batch-size", str(batch_size), "--train-batch", str(train_batch),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"the official {method} comparison failed: {last[0]}")
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    return [dict(r, implementation="suite / official", value=r["ratio"], unit="suite / official", measure_unit=r["unit"],
                 device=device) for r in rows]


def markdown(rows: list[dict]) -> str:
    """The table of the README: per method and shape, suite figures and (when measured) official
    figures and the ratio."""
    lines = []
    main = [r for r in rows if r["implementation"] == "suite" and not r["what"].startswith("series")]
    official = {(r["method"], r["shape"], r["what"]): r for r in rows if r["implementation"] == "suite / official"}
    if official:
        lines += ["| method | shape | measurement | batch | official | suite | suite / official | same output |",
                  "|:---|:---|:---|---:|---:|---:|---:|:---|"]
        for (m, s, w), r in official.items():
            same = (f"max abs pixel difference {r['parity_max_abs']:.1e}" + (", tokens equal" if r.get("tokens_equal") else "")
                    if "parity_max_abs" in r else "")
            lines.append(f"| {m} | {s} | {w.replace('_', ' ')} | {r['batch_size']} | {r['official']:.3g} {r['measure_unit']} | "
                         f"{r['suite']:.3g} {r['measure_unit']} | **{r['ratio']:.2f}×** | {same} |")
        lines.append("")
    if main:
        lines += ["| method | shape | measurement | batch | suite | tokens | GFLOPs/img |", "|:---|:---|:---|---:|---:|---:|---:|"]
        for r in main:
            lines.append(f"| {r['method']} | {r['shape']} ({r['preset']}, {r['resolution']} px) | {r['what'].replace('_', ' ')} | "
                         f"{r['batch_size']} | {r['value']:.3g} {r['unit']} | {r['tokens']} | {r['gflops_per_image']:.3g} |")
    return "\n".join(lines) + "\n"


def plot_series(rows: list[dict], path: Path) -> Path | None:
    """Cost per image against the token count, one panel per series, with the line that grows
    like sum(side^2) through each method's first point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import seaborn as sns
    series = [r for r in rows if r["what"].startswith("series")]
    if not series:
        return None
    kinds = sorted({r["what"] for r in series})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), squeeze=False)
    palette = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
    for ax, kind in zip(axes[0], kinds):
        for method in METHODS:
            pts = sorted(((r["tokens"], r["value"]) for r in series if r["what"] == kind and r["method"] == method))
            if not pts:
                continue
            x, y = zip(*pts)
            ax.plot(x, y, "o-", color=palette[method], label=method)
            ax.plot(x, [y[0] * t / x[0] for t in x], ":", color=palette[method], alpha=0.7)
        ax.set(xscale="log", yscale="log", xlabel="tokens per image, Σ side²", ylabel="ms per image (token generation)",
               title=kind.replace("series: ", "against the ") + " (dotted: ∝ Σ side²)")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(sorted({r["tokens"] for r in series if r["what"] == kind}))
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def check(methods, shapes, official, batch_size, train_batch, repeats) -> None:
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods {m}: bench knows {', '.join(METHODS)}")
    for s in shapes:
        if s not in SHAPES:
            raise ConfigError(f"--shapes {s}: choose from {', '.join(SHAPES)}")
    for name, value in (("batch-size", batch_size), ("train-batch", train_batch), ("repeats", repeats)):
        if value < 1:
            raise ConfigError(f"--{name}={value} must be at least 1")
    if official:
        from benchmark.official_bench import find_checkout
        for m in methods:
            find_checkout(m, official)   # a missing checkout fails here, before any timing


def bench(methods=METHODS, shapes=("tiny",), official: str | None = None, batch_size: int = 16, train_batch: int = 16,
          repeats: int = 3, series: bool = True, out: str | Path = "results/bench", overrides=(),
          dtype: str = "fp32") -> list[dict]:
    check(methods, shapes, official, batch_size, train_batch, repeats)
    device = str(distributed.resolve_device(load_config("tiny", list(overrides)).device))
    rows = []
    for shape in shapes:
        for method in methods:
            print(f"bench: {method} at {shape} shapes ...", flush=True)
            rows += suite_rows(method, shape, batch_size, train_batch, repeats, overrides, dtype)
            if official:
                rows += official_rows(method, official, shape, device, batch_size, train_batch, repeats)
    if series:
        for method in methods:
            print(f"bench: {method} scaling series ...", flush=True)
            rows += series_rows(method, min(batch_size, 8), repeats, overrides)
    out = Path(out)
    doc = {"rows": rows, "settings": dict(methods=list(methods), shapes=list(shapes), official=official,
                                          batch_size=batch_size, train_batch=train_batch, repeats=repeats, dtype=dtype,
                                          statistic="median after one warm-up call", overrides=list(overrides)),
           "provenance": provenance(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(out / "bench.json", json.dumps(doc, indent=1, default=str))
    import pandas as pd
    atomic_write(out / "bench.csv", lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    write_text(out / "bench.md", markdown(rows))
    plot_series(rows, out / "scaling.png")
    print(markdown(rows) + f"written: {out / 'bench.json'}, {out / 'bench.csv'}, {out / 'bench.md'}, {out / 'scaling.png'}")
    return rows
