"""Command line: ``python -m benchmark {run,status,collect,list,train-tokenizer,sample,evaluate,prefetch}``.

    python -m benchmark run --methods flowar                      # tiny preset, CPU friendly
    python -m benchmark run --methods flowar --preset smoke train.steps=50
    python -m benchmark run --methods flowar var --cluster one-node --seeds 0 1 --dry-run
    python -m benchmark status                                    # the newest sweep's jobs
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
    run.add_argument("--seeds", nargs="+", default=None, help="seeds (default: the config's seed)")
    run.add_argument("--stages", nargs="+", default=["tokenizer", "latents", "train", "evaluate"],
                     help="stages to run, in order (default: all); finished stages are skipped anyway")
    run.add_argument("--preset", nargs="+", default=["tiny"],
                     help="config preset(s) in benchmark/configs (default: tiny); several make a sweep over them")
    run.add_argument("--executor", choices=["inline", "local", "slurm"], default=None,
                     help="inline: this process; local: submitit subprocesses (default); slurm: job arrays")
    run.add_argument("--cluster", default=None, help="cluster preset in jobs/clusters (e.g. one-node) or a YAML path")
    run.add_argument("--dry-run", action="store_true", help="print the jobs, arrays and sbatch resources; submit nothing")
    run.add_argument("--redo-evaluate", action="store_true",
                     help="evaluate again even where this evaluation's record exists (finished work is skipped otherwise)")
    run.add_argument("--no-wait", action="store_true", help="slurm: return after submitting (watch with `status`)")
    run.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.steps=500")
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
    ev = sub.add_parser("evaluate", help="score samples, a run directory or a checkpoint: FID / IS / KID / "
                                         "precision-recall (torch-fidelity) against a reference, or the shapes "
                                         "domain metrics of a run; writes a record")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", help="folder of PNGs (e.g. `sample --out`) or an .npz with arr_0")
    what.add_argument("--run", help="a run directory (runs/<preset>/<method>-<hash>/seed<N>): its config and weights; "
                                    "on shapes without --reference, the domain evaluation of the run stage")
    what.add_argument("--checkpoint", help="a suite or official checkpoint (with --method and --preset); sampled to "
                                           "--out, then scored against --reference")
    ev.add_argument("--reference", default=None, help="ADM reference batch .npz (arr_0 and/or mu, sigma), a folder, "
                                                      "or `dataset`: the config's data, held-out split, eval.reference_size "
                                                      "images at the evaluation resolution (cached as an npz)")
    ev.add_argument("--method", default=None, help="with --checkpoint: the method it belongs to")
    ev.add_argument("--preset", default="tiny", help="with --checkpoint: the config preset it was trained with")
    ev.add_argument("--out", default=None, help="with --run / --checkpoint: where the samples go (resumable)")
    ev.add_argument("overrides", nargs="*", help="config overrides for --run / --checkpoint, e.g. eval.samples_per_class=50")
    ev.add_argument("--inception-weights", default=None, help="local Inception weights (else cache / download)")
    ev.add_argument("--metrics", nargs="+", default=["isc", "fid", "kid", "prc"], choices=["isc", "fid", "kid", "prc"])
    ev.add_argument("--results", default="results")
    ev.add_argument("--batch-size", type=int, default=50)
    ev.add_argument("--device", default="auto")
    pre = sub.add_parser("prefetch", help="download (where online) and check the Inception weights the fidelity "
                                          "metrics need, for compute nodes without internet")
    pre.add_argument("--inception-weights", default=None, help="use / check this file instead of torch hub's cache")
    col = sub.add_parser("collect", help="rebuild the leaderboard and plots from the records (of a sweep's results)")
    col.add_argument("run", nargs="?", default=None, help="a sweep folder (default: --results)")
    col.add_argument("--results", default="results")
    st = sub.add_parser("status", help="each job of a sweep: state, id, error")
    st.add_argument("run", nargs="?", default=None, help="the sweep folder `run` printed (default: the newest)")
    st.add_argument("--runs", default="runs", help="where sweeps are looked up by name (paths.runs)")
    st.add_argument("--wait", action="store_true", help="poll until every job has ended")
    return p


def cmd_list() -> int:
    for title, reg in (("methods", METHODS), ("tokenizers", TOKENIZERS), ("datasets", DATASETS)):
        print(f"{title}: {', '.join(names(reg))}")
    print(f"presets: {', '.join(sorted(p.stem for p in PRESET_DIR.glob('*.yaml')))}")
    return 0


def split_overrides(args) -> None:
    """`--methods flowar var train.steps=5`: argparse gives the overrides to the list option
    before them (--methods, --stages, --seeds, --preset)."""
    for name in ("methods", "stages", "seeds", "preset"):
        values = getattr(args, name, None)
        if isinstance(values, list):
            args.overrides = [m for m in values if "=" in m] + args.overrides
            setattr(args, name, [m for m in values if "=" not in m])
    if getattr(args, "seeds", None):
        bad = [s for s in args.seeds if not s.lstrip("-").isdigit()]
        if bad:
            raise ConfigError(f"--seeds {' '.join(bad)}: seeds are integers, e.g. --seeds 0 1 2")
        args.seeds = [int(s) for s in args.seeds]


def cmd_run(args) -> int:
    from jobs import executors
    from jobs.sweep import STAGES, collect, plan
    for m in args.methods:  # fail before any work
        lookup(METHODS, m)
    overrides = list(args.overrides) + ([f"jobs.executor={args.executor}"] if args.executor else [])
    configs = [load_config(preset, overrides, args.cluster) for preset in args.preset]
    cfg = configs[0]
    for c in configs:
        if c.data.name == "imagefolder" and not c.data.root:
            raise ConfigError("data.root is not set; imagefolder needs data.root=/path/to/folder")
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from: {', '.join(STAGES)}")
    if "evaluate" in args.stages and any(c.data.name != "shapes" for c in configs):
        raise ConfigError("data.name=imagefolder: the run's evaluate stage scores only `shapes`; for image folders "
                          "run --stages tokenizer latents train, then `sample` and `evaluate` (Inception metrics).")
    groups = plan(configs, args.methods, args.seeds, tuple(args.stages), args.redo_evaluate)
    executor = cfg.jobs.executor
    if args.dry_run:
        print(executors.dry_run(groups, cfg) if executor == "slurm" else
              "\n".join(f"== {g.name} ({executor}): " + ", ".join(j.name for j in g.jobs) for g in groups))
        return 0
    start = time.time()
    if executor == "inline":
        outputs = executors.run_inline(groups)
        rows = [{"job": j.name, "state": executors.FINISHED} for g in groups for j in g.jobs]
        records = [o for out in outputs["outputs"] for o in out if o.endswith(".json")]
    else:
        folder = executors.sweep_folder(cfg)
        if executor == "slurm":
            record = executors.submit_slurm(groups, cfg, folder)
            sweep = executors.write_sweep(folder, cfg, executor, record, sys.argv)
            print(f"submitted {sum(len(g.jobs) for g in groups)} job(s) in {len(groups)} array(s): "
                  + ", ".join(f"{g['name']}={g['array_id']}" for g in record["groups"]) + f"\nsweep: {folder}")
            if args.no_wait:
                print(f"watch: python -m benchmark status {folder}")
                return 0
        else:
            print(f"sweep: {folder}")
            record = executors.run_local(groups, cfg, folder,
                                         save=lambda r: executors.write_sweep(folder, cfg, executor, r, sys.argv))
            sweep = executors.write_sweep(folder, cfg, executor, record, sys.argv)
        rows = executors.wait(sweep.parent, poll_s=2.0 if executor == "slurm" else 0.1,
                              log=print if executor == "slurm" else (lambda *_: None))
        records = [p for r in rows if r["state"] == executors.FINISHED   # evaluate: one record per row
                   for p in r["detail"].split(", ") if p.endswith(".json")]
    failed = [r for r in rows if r["state"] != executors.FINISHED]
    if "evaluate" not in args.stages:
        print(f"{len(rows) - len(failed)} job(s) finished in {time.time() - start:.0f}s")
        return 1 if failed else 0
    frame = collect(cfg.paths.results)
    print(f"\n{len(records)} record(s) in {time.time() - start:.0f}s: " + ", ".join(records))
    cols = [c for c in ("method", "seed", "sampler", "class_consistency", "classifier_fd", "classifier_is",
                        "ref_classifier_acc_real", "ref_classifier_acc_recon", "ref_untrained_class_consistency",
                        "ref_untrained_classifier_fd", "throughput_img_s", "nfe", "params_m", "note")
            if c in frame.columns]
    hashes = {json.loads(Path(r).read_text())["config_hash"] for r in records if Path(r).exists()}
    mine = frame[frame.config_hash.isin(hashes)] if len(frame) else frame
    if len(mine):
        print(mine[cols].to_string(index=False))
    print(f"leaderboard: {cfg.paths.results}/leaderboard.csv")
    if failed:
        print(f"{len(failed)} job(s) did not finish:\n{executors.format_status(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args) -> int:
    from jobs import executors
    folder = executors.find_sweep(args.run, args.runs)
    rows = executors.wait(folder) if args.wait else executors.status(folder)
    print(f"sweep: {folder}\n{executors.format_status(rows)}")
    return 0 if all(r["state"] == executors.FINISHED for r in rows) else 1


def cmd_collect(args) -> int:
    from jobs import executors
    from jobs.sweep import collect
    results_dir = args.results
    if args.run:
        results_dir = json.loads((executors.find_sweep(args.run) / "sweep.json").read_text())["results"]
    frame = collect(results_dir)
    print(frame.to_string(index=False) if len(frame) else f"no records under {results_dir}/records")
    print(f"leaderboard: {results_dir}/leaderboard.csv")
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
    """Samples, a run directory or a checkpoint; the Inception weights are found before any work."""
    from benchmark.metrics.fidelity import MissingWeightsError, evaluate_folder, inception_weights
    from benchmark.stages import resolve_device
    if args.checkpoint and not (args.method and args.reference):
        raise ConfigError("--checkpoint needs --method (the method it belongs to) and --reference (what to score against)")
    if args.samples and not args.reference:
        raise ConfigError("--samples needs --reference (an ADM .npz, a folder of images, or `dataset`)")
    cfg = method = None
    if args.run:
        cfg, method = run_config(Path(args.run), args.overrides)
        if not args.reference:   # the domain evaluation, exactly as the run's evaluate stage
            if cfg.data.name != "shapes":
                raise ConfigError(f"{args.run} trained on {cfg.data.name}: pass --reference (an ADM .npz or a folder)")
            from benchmark.stages import evaluate_method
            for record in evaluate_method(cfg, method):
                print(f"record: {record}")
            return 0
    try:   # before any work: the weights, then the inputs
        weights = inception_weights(args.inception_weights)
    except (MissingWeightsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.reference == "dataset":
        cfg = cfg or load_config(args.preset, args.overrides)
        args.reference = str(dataset_reference(cfg))
    samples = args.samples
    if not samples:
        from benchmark.sample import sample_to_folder
        if args.checkpoint:
            lookup(METHODS, args.method)
            cfg, method, checkpoint = load_config(args.preset, args.overrides), args.method, args.checkpoint
            out = Path(args.out or Path(cfg.paths.runs) / "samples" / Path(checkpoint).stem)
        else:
            checkpoint = Path(args.run) / f"{cfg.eval.weights}.safetensors"
            out = Path(args.out or Path(args.run) / "samples")
        sample_to_folder(cfg, method, checkpoint, out, cfg.data.num_classes, ema=cfg.eval.weights == "ema")
        samples = out
    out = evaluate_folder(samples, args.reference, weights, args.results, tuple(args.metrics), args.batch_size,
                          resolve_device(args.device).type)
    print(json.dumps(json.loads(out.read_text())["metrics"], indent=2))
    print(f"record: {out}")
    return 0


def dataset_reference(cfg) -> Path:
    """The config's dataset as a reference batch (ADM layout): ``eval.reference_size`` held-out
    images (shapes: its reference split; an image folder: val/, centre-cropped) at the
    evaluation resolution, written once to the cache."""
    import numpy as np
    import torch
    from benchmark.metrics.fidelity import write_reference
    from benchmark.stages import build_dataset, to_uint8
    resolution = cfg.eval.resolution or cfg.data.resolution
    data = build_dataset(cfg, "reference", resolution=resolution)
    n = min(cfg.eval.reference_size, len(data))
    name = f"{cfg.data.name}-{cfg.data.variant if cfg.data.name == 'shapes' else Path(cfg.data.root).name}"
    path = Path(cfg.paths.cache) / "references" / f"{name}-{resolution}px-{n}.npz"
    if not path.exists():
        images = torch.cat([data.render(np.arange(i, min(i + 256, n)))[0] for i in range(0, n, 256)])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_reference(path.with_suffix(".tmp.npz"), to_uint8(images)).replace(path)   # never a half-written cache
    print(f"reference: {path} ({n} images of {cfg.data.name} at {resolution} px)")
    return path


def run_config(run: Path, overrides: list[str]):
    """The config and method of a run directory (its config.yaml, as the run wrote it)."""
    from benchmark.config import load_saved
    if not (run / "config.yaml").exists():
        raise ConfigError(f"{run} has no config.yaml: pass a run directory such as runs/tiny/var-<hash>/seed0")
    method = run.parent.name.rsplit("-", 1)[0]
    lookup(METHODS, method)
    return load_saved(run / "config.yaml", overrides), method


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
    try:
        split_overrides(args)
        if args.command == "list":
            return cmd_list()
        if args.command == "run":
            try:
                return cmd_run(args)
            except KeyboardInterrupt:   # training saved a checkpoint at the step it was on
                print("\ninterrupted: finished stages and the training checkpoint are kept; run the same command "
                      "again to resume", file=sys.stderr)
                return 130
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "train-tokenizer":
            return cmd_train_tokenizer(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "prefetch":
            return cmd_prefetch(args)
        if args.command == "collect":
            return cmd_collect(args)
        if args.command == "status":
            return cmd_status(args)
    except (ConfigError, UnknownNameError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1
