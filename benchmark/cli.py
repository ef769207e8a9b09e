"""Command line: ``python -m benchmark {run,list,train-tokenizer,collect}``.

    python -m benchmark run --methods flowar                      # tiny preset, CPU friendly
    python -m benchmark run --methods flowar --preset smoke train.steps=50
    python -m benchmark list
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmark.config import PRESET_DIR, ConfigError, load_config
from methods.registry import DATASETS, METHODS, TOKENIZERS, UnknownNameError, lookup, names


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="config preset in benchmark/configs (default: tiny)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.steps=500")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, sample and evaluate methods; update results/")
    run.add_argument("--methods", nargs="+", required=True, help="registered method names (see `list`)")
    run.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the config's seed)")
    run.add_argument("--stages", nargs="+", default=["tokenizer", "latents", "train", "evaluate"],
                     help="stages to run, in order (default: all); finished stages are skipped anyway")
    _common(run)
    tok = sub.add_parser("train-tokenizer", help="train (or load) the tokenizer a method uses; cached")
    tok.add_argument("--method", default="flowar", help="the method whose tokenizer to train")
    _common(tok)
    smp = sub.add_parser("sample", help="sample a checkpoint to PNGs + an ADM-style npz (resumable)")
    smp.add_argument("--method", default="flowar")
    smp.add_argument("--checkpoint", required=True, help="a suite run's ema.safetensors or an official checkpoint")
    smp.add_argument("--tokenizer-checkpoint", default=None, help="sets <tokenizer>.pretrained")
    smp.add_argument("--out", required=True, help="output folder (rerun to resume)")
    smp.add_argument("--num-classes", type=int, default=None, help="default: data.num_classes")
    smp.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    _common(smp)
    sub.add_parser("list", help="list registered methods, tokenizers, datasets and presets")
    ev = sub.add_parser("evaluate", help="FID / IS / KID / precision-recall (torch-fidelity) of a sample folder or "
                                         ".npz against a reference (ADM .npz or folder); writes a record")
    ev.add_argument("--samples", required=True, help="folder of PNGs (e.g. `sample --out`) or an .npz with arr_0")
    ev.add_argument("--reference", required=True, help="ADM reference batch .npz (arr_0 and/or mu, sigma) or a folder")
    ev.add_argument("--inception-weights", default=None, help="local Inception weights (else cache / download)")
    ev.add_argument("--metrics", nargs="+", default=["isc", "fid", "kid", "prc"], choices=["isc", "fid", "kid", "prc"])
    ev.add_argument("--results", default="results")
    ev.add_argument("--batch-size", type=int, default=50)
    ev.add_argument("--device", default="auto")
    pre = sub.add_parser("prefetch", help="download (where online) and check the Inception weights the fidelity "
                                          "metrics need, for compute nodes without internet")
    pre.add_argument("--inception-weights", default=None, help="use / check this file instead of torch hub's cache")
    col = sub.add_parser("collect", help="rebuild the leaderboard and plots from the records")
    col.add_argument("--results", default="results")
    return p


def cmd_list() -> int:
    for title, reg in (("methods", METHODS), ("tokenizers", TOKENIZERS), ("datasets", DATASETS)):
        print(f"{title}: {', '.join(names(reg))}")
    print(f"presets: {', '.join(sorted(p.stem for p in PRESET_DIR.glob('*.yaml')))}")
    return 0


def split_overrides(args) -> None:
    """`--methods flowar var train.steps=5`: argparse gives the overrides to the list option
    before them (--methods, --stages, --seeds)."""
    for name in ("methods", "stages"):
        values = getattr(args, name, None)
        if values:
            args.overrides = [m for m in values if "=" in m] + args.overrides
            setattr(args, name, [m for m in values if "=" not in m])


def cmd_run(args) -> int:
    from jobs.sweep import STAGES, collect, make_jobs, run_inline
    for m in args.methods:  # fail before any work
        lookup(METHODS, m)
    cfg = load_config(args.preset, args.overrides)
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.root is not set; imagefolder needs data.root=/path/to/folder")
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from: {', '.join(STAGES)}")
    if "evaluate" in args.stages and cfg.data.name != "shapes":
        raise ConfigError(f"data.name={cfg.data.name!r}: this version scores only `shapes` (Inception FID/IS for "
                          "image folders come with the evaluation-suite issue). Run with --stages tokenizer latents train.")
    jobs = make_jobs(cfg, args.methods, args.seeds or [cfg.seed], args.stages)
    start = time.time()
    records = run_inline(jobs)
    if "evaluate" not in args.stages:
        print(f"{len(jobs)} job(s) finished in {time.time() - start:.0f}s: " + ", ".join(map(str, records)))
        return 0
    frame = collect(cfg.paths.results)
    records = [p for r in records for p in (r if isinstance(r, list) else [r])]   # evaluate: one record per row
    print(f"\n{len(jobs)} job(s) finished in {time.time() - start:.0f}s; records: "
          + ", ".join(str(r) for r in records))
    cols = [c for c in ("method", "seed", "sampler", "class_consistency", "classifier_fd", "classifier_is",
                        "ref_classifier_acc_real", "ref_classifier_acc_recon", "ref_untrained_class_consistency",
                        "ref_untrained_classifier_fd", "throughput_img_s", "nfe", "params_m", "note")
            if c in frame.columns]
    hashes = {json.loads(Path(r).read_text())["config_hash"] for r in records}
    mine = frame[frame.config_hash.isin(hashes)] if len(frame) else frame
    if len(mine):
        print(mine[cols].to_string(index=False))
    print(f"leaderboard: {cfg.paths.results}/leaderboard.csv")
    return 0


def cmd_train_tokenizer(args) -> int:
    from benchmark import stages
    lookup(METHODS, args.method)
    cfg = load_config(args.preset, args.overrides)
    out = stages.train_tokenizer(cfg, args.method)
    print((out / "tokenizer.json").read_text())
    return 0


def cmd_sample(args) -> int:
    from benchmark.sample import sample_to_folder
    lookup(METHODS, args.method)
    overrides = list(args.overrides)
    if args.tokenizer_checkpoint:
        cfg0 = load_config(args.preset, overrides)
        overrides.append(f"{cfg0[args.method].tokenizer}.pretrained={args.tokenizer_checkpoint}")
    cfg = load_config(args.preset, overrides)
    sample_to_folder(cfg, args.method, args.checkpoint, args.out, args.num_classes or cfg.data.num_classes,
                     ema=not args.raw)
    return 0


def cmd_evaluate(args) -> int:
    import json
    from benchmark.metrics.fidelity import MissingWeightsError, evaluate_folder, inception_weights
    from benchmark.stages import resolve_device
    try:   # before any work: the weights, then the inputs
        weights = inception_weights(args.inception_weights)
    except (MissingWeightsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = evaluate_folder(args.samples, args.reference, weights, args.results, tuple(args.metrics), args.batch_size,
                          resolve_device(args.device).type)
    print(json.dumps(json.loads(out.read_text())["metrics"], indent=2))
    print(f"record: {out}")
    return 0


def cmd_prefetch(args) -> int:
    import hashlib
    from benchmark.metrics.fidelity import MissingWeightsError, inception_weights
    try:
        path = inception_weights(args.inception_weights, download=True)
    except (MissingWeightsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"Inception weights: {path}\nsha256: {digest}\n(set SCALEWISE_INCEPTION_WEIGHTS={path} on nodes that "
          "do not share this cache)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    split_overrides(args)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "train-tokenizer":
            return cmd_train_tokenizer(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "prefetch":
            return cmd_prefetch(args)
        if args.command == "collect":
            from jobs.sweep import collect
            print(collect(args.results).to_string(index=False))
            return 0
    except (ConfigError, UnknownNameError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1
