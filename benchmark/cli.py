"""Command line: ``python -m benchmark COMMAND`` (``--help`` lists them all).

    python -m benchmark run --methods flowar                      # tiny preset, CPU friendly
    python -m benchmark run --methods flowar --preset smoke train.steps=50
    python -m benchmark run --methods flowar var --cluster one-node --seeds 0 1 --dry-run
    python -m benchmark status                                    # the newest sweep's jobs
    python -m benchmark list

A thin layer over the Python API (benchmark/api.py). Nothing heavy is imported before a
command needs it: `--help`, `list` and `status` start without torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from methods.config import ConfigError
from methods.plugins import PluginImportError, UnknownNameError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="config preset in benchmark/configs, or a YAML file (default: tiny)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.steps=500")


def add_run(sub) -> None:
    run = sub.add_parser("run", help="train, sample and evaluate methods; update results/")
    run.add_argument("--methods", nargs="+", required=True, help="registered method names (see `list`)")
    run.add_argument("--seeds", nargs="+", default=None, help="seeds (default: the config's seed)")
    run.add_argument("--stages", nargs="+", default=["tokenizer", "latents", "train", "evaluate"],
                     help="stages to run, in order (default: all); finished stages are skipped anyway")
    run.add_argument("--preset", nargs="+", default=["tiny"],
                     help="config preset(s) in benchmark/configs or YAML files (default: tiny); several make a sweep")
    run.add_argument("--executor", choices=["inline", "local", "slurm"], default=None,
                     help="inline: this process; local: submitit subprocesses (default); slurm: job arrays")
    run.add_argument("--cluster", default=None, help="cluster preset in jobs/clusters (e.g. one-node) or a YAML path")
    run.add_argument("--dry-run", action="store_true", help="print the jobs, arrays and sbatch resources; submit nothing")
    run.add_argument("--redo-evaluate", action="store_true",
                     help="evaluate again even where this evaluation's record exists (finished work is skipped otherwise)")
    run.add_argument("--no-wait", action="store_true", help="slurm: return after submitting (watch with `status`)")
    run.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.steps=500")


def add_reproduce(sub) -> None:
    rp = sub.add_parser("reproduce", help="a paper table from the released checkpoints: sample (resumable), score "
                        "with torch-fidelity, published vs measured")
    rp.add_argument("table", help="var | flowar | flexvar | flexvar-steps | flexvar-512")
    rp.add_argument("--checkpoints", required=True, help="folder with the released files (var_d16.pth, "
                    "vae_ch160v4096z32.pth, FlowAR-S.pth, kl16.ckpt, FlexVARd16-epo179.pth, FlexVAE.pth, ...)")
    rp.add_argument("--reference", default=None, help="the 256 px ADM reference batch (VIRTUAL_imagenet256_labeled.npz)")
    rp.add_argument("--reference-512", default=None, help="the 512 px one (VIRTUAL_imagenet512.npz)")
    rp.add_argument("--inception-weights", default=None, help="local Inception weights (else cache / download)")
    rp.add_argument("--samples-per-class", type=int, default=50, help="images per class (default 50: 50,000 images)")
    rp.add_argument("--only", nargs="+", default=(), help="only these rows (their names in the table)")
    rp.add_argument("--results", default="results")
    rp.add_argument("--executor", choices=["inline", "local", "slurm"], default=None)
    rp.add_argument("--cluster", default=None, help="cluster preset (jobs/clusters) for --executor slurm")
    rp.add_argument("--dry-run", action="store_true", help="print the jobs; sample nothing")
    rp.add_argument("overrides", nargs="*", help="config overrides for every row, e.g. eval.batch_size=128")


def add_sample_and_evaluate(sub) -> None:
    smp = sub.add_parser("sample", help="sample a checkpoint to PNGs + an ADM-style npz (resumable)")
    smp.add_argument("--method", default="flowar")
    smp.add_argument("--checkpoint", required=True, help="a suite run's ema.safetensors or an official checkpoint")
    smp.add_argument("--tokenizer-checkpoint", default=None, help="sets <tokenizer>.pretrained")
    smp.add_argument("--out", required=True, help="output folder (rerun to resume)")
    smp.add_argument("--num-classes", type=int, default=None, help="default: data.num_classes")
    smp.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    _common(smp)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_run(sub)
    tok = sub.add_parser("train-tokenizer", help="train (or load) the tokenizer a method uses; cached")
    tok.add_argument("--method", default="flowar", help="the method whose tokenizer to train")
    tok.add_argument("--ship", action="store_true", help="maintainers: train it here and store it in "
                     "benchmark/shipped/tokenizers/<key> with its provenance, to be committed")
    _common(tok)
    add_sample_and_evaluate(sub)
    add_reproduce(sub)
    add_bench(sub)
    sub.add_parser("list", help="list registered methods, tokenizers, datasets and presets")
    pre = sub.add_parser("prefetch", help="download (where online) and check the Inception weights the fidelity "
                                          "metrics need, for compute nodes without internet")
    pre.add_argument("--inception-weights", default=None, help="use / check this file instead of torch hub's cache")
    col = sub.add_parser("collect", help="rebuild the leaderboard and plots from the records (of a sweep's results)")
    col.add_argument("run", nargs="?", default=None, help="a sweep folder (default: --results)")
    col.add_argument("--results", default="results")
    col.add_argument("--readme", default=None, help="also rewrite this file's <!-- generated:NAME --> blocks from "
                     "these results (how the README's figures are made from results/reference)")
    val = sub.add_parser("validate-evaluator", help="score deliberately broken generators with the shapes evaluator "
                         "(which metric catches what): results/evaluator_validation.{csv,md}")
    val.add_argument("--samples", type=int, default=800, help="images per set (default: 800, tiny's evaluation)")
    val.add_argument("--repeats", type=int, default=5, help="disjoint real sets for the real-vs-real spread")
    val.add_argument("--variant", default="easy", choices=["easy", "hard"])
    val.add_argument("--results", default="results", help="where the tables go")
    val.add_argument("--cache", default="cache", help="where an evaluator trained here (no shipped one) is cached")
    rep = sub.add_parser("report", help="one self-contained HTML report of a results folder (tables, plots, grids, "
                         "the papers' published numbers)")
    rep.add_argument("--results", default="results")
    rep.add_argument("--out", default=None, help="default: <results>/report.html")
    rep.add_argument("--with-reference", action="store_true", help="show the shipped results/reference rows too")
    st = sub.add_parser("status", help="each job of a sweep: state, id, error")
    st.add_argument("run", nargs="?", default=None, help="the sweep folder `run` printed (default: the newest)")
    st.add_argument("--runs", default="runs", help="where sweeps are looked up by name (paths.runs)")
    st.add_argument("--wait", action="store_true", help="poll until every job has ended")
    return p


def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="sampling and training speed per method (with --official: against the official "
                       "code, side by side) and the scaling series: results/bench/")
    b.add_argument("--methods", nargs="+", default=["flowar", "var", "flexvar"])
    b.add_argument("--shapes", nargs="+", default=["tiny"], help="tiny (default) and/or paper (VAR-d16, FlexVAR-d16, "
                   "FlowAR-S sizes)")
    b.add_argument("--official", default=None, help="a folder holding checkouts of the official repositories "
                   "(FoundationVision/VAR, jiaosiyu1999/FlexVAR, wangqiang9/FlowAR), or one of them")
    b.add_argument("--batch-size", type=int, default=16, help="the large sampling batch (batch 1 is always measured)")
    b.add_argument("--train-batch", type=int, default=16)
    b.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up; the median is reported")
    b.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="sampling under bf16 autocast or not")
    b.add_argument("--no-series", action="store_true", help="skip the scaling series")
    b.add_argument("--out", default="results/bench")
    b.add_argument("overrides", nargs="*", help="config overrides, e.g. device=cuda")


def cmd_list(args) -> int:
    """Declared names (entry points), without importing any method."""
    from benchmark.presets import preset_names
    from methods.plugins import declared
    for kind in ("method", "tokenizer", "dataset"):
        print(f"{kind}s: {', '.join(sorted(declared(kind)))}")
    print(f"presets: {', '.join(preset_names())}")
    return 0


def split_overrides(args) -> None:
    """`--methods flowar var train.steps=5`: argparse gives the overrides to the list option
    before them (--methods, --stages, --seeds, --preset)."""
    for name in ("methods", "stages", "seeds", "preset", "only", "shapes"):
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
    from benchmark import api
    if args.dry_run:
        from jobs import executors
        groups, cfg = api.plan(args.methods, args.preset, args.seeds, args.stages, args.overrides, args.cluster,
                               args.executor, args.redo_evaluate)
        print(executors.dry_run(groups, cfg) if cfg.jobs.executor == "slurm" else
              "\n".join(f"== {g.name} ({cfg.jobs.executor}): " + ", ".join(j.name for j in g.jobs) for g in groups))
        return 0
    start = time.time()
    board = api.run(args.methods, args.preset, args.seeds, args.stages, args.overrides, args.executor, args.cluster,
                    args.redo_evaluate, wait=not args.no_wait)
    failed, records, sweep = board.attrs["failed"], board.attrs["records"], board.attrs["sweep"]
    if sweep:
        print(f"sweep: {sweep}")
    if args.no_wait:
        print(f"submitted; watch: python -m benchmark status {sweep}")
        return 0
    print(f"\n{len(records)} record(s) in {time.time() - start:.0f}s" + (": " + ", ".join(records) if records else ""))
    cols = [c for c in ("method", "seed", "sampler", "class_consistency", "factor_hue_w1", "factor_size_w1", "factor_position_w1",
                        "domain_fd", "domain_recall", "ref_class_acc_recon", "ref_factor_hue_w1_recon",
                        "ref_untrained_class_consistency", "throughput_img_s", "nfe", "note")
            if c in board.columns]
    if len(board):
        print(board[cols].to_string(index=False))
        print("leaderboard: results/leaderboard.csv" if "evaluate" in args.stages else "")
    if failed:
        from jobs.status import format_status
        print(f"{len(failed)} job(s) did not finish:\n{format_status(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args) -> int:
    from jobs import status
    folder = status.find_sweep(args.run, args.runs)
    rows = status.wait(folder) if args.wait else status.status(folder)
    print(f"sweep: {folder}\n{status.format_status(rows)}")
    return 0 if all(r["state"] == status.FINISHED for r in rows) else 1


def cmd_collect(args) -> int:
    from benchmark import api
    from jobs.status import find_sweep
    results_dir = args.results
    if args.run:
        results_dir = json.loads((find_sweep(args.run) / "sweep.json").read_text())["results"]
    if not any(Path(results_dir, "records").rglob("*.json")):
        print(f"error: no records under {results_dir}/records: run `python -m benchmark run ...` first, or give "
              "--results the folder a run wrote (its paths.results)", file=sys.stderr)
        return 1
    frame = api.collect(results_dir)
    print(frame.to_string(index=False) if len(frame) else f"no readable records under {results_dir}/records")
    print(f"leaderboard: {results_dir}/leaderboard.csv")
    if args.readme:
        from benchmark.results.readme import update_readme
        print(f"{args.readme}: rewrote " + (", ".join(update_readme(args.readme, results_dir)) or "no block"))
    return 0


def cmd_train_tokenizer(args) -> int:
    from benchmark import stages
    from benchmark.config import load_config
    from methods.registry import METHODS, lookup
    lookup(METHODS, args.method)
    overrides = list(args.overrides) + (["paths.shipped=none"] if args.ship else [])
    out = stages.train_tokenizer(load_config(args.preset, overrides), args.method)
    print((out / "tokenizer.json").read_text() + (f"\nshipped: {stages.ship_tokenizer(out)}" if args.ship else ""))
    return 0


def cmd_sample(args) -> int:
    from benchmark.config import load_config
    from benchmark.sample import sample_to_folder
    from methods.registry import METHODS, lookup
    lookup(METHODS, args.method)
    overrides = list(args.overrides)
    if args.tokenizer_checkpoint:
        cfg0 = load_config(args.preset, overrides)
        overrides.append(f"{cfg0[args.method].tokenizer}.pretrained={args.tokenizer_checkpoint}")
    cfg = load_config(args.preset, overrides)
    if args.num_classes is not None and not 1 <= args.num_classes <= cfg.data.num_classes:
        raise ConfigError(f"--num-classes {args.num_classes}: the model has {cfg.data.num_classes} classes "
                          f"(data.num_classes; label {cfg.data.num_classes} is the null class of guidance); give "
                          f"1 to {cfg.data.num_classes}")
    sample_to_folder(cfg, args.method, args.checkpoint, args.out, args.num_classes or cfg.data.num_classes,
                     ema=not args.raw)
    return 0


def cmd_evaluate(args) -> int:
    """Samples, a run directory or a checkpoint; the Inception weights are found before any work."""
    from benchmark import api
    if args.checkpoint and not (args.method and args.reference):
        raise ConfigError("--checkpoint needs --method (the method it belongs to) and --reference (what to score against)")
    if args.samples and not args.reference:
        raise ConfigError("--samples needs --reference (an ADM .npz, a folder of images, or `dataset`)")
    if args.run and not args.reference:   # the domain evaluation, exactly as the run's evaluate stage
        for record in api.evaluate(args.run, args.overrides).attrs["records"]:
            print(f"record: {record}")
        return 0
    from benchmark.metrics.fidelity import MissingWeightsError, inception_weights
    for name, path in (("--samples", args.samples), ("--reference", args.reference), ("--checkpoint", args.checkpoint)):
        if path and path != "dataset" and not Path(path).exists():   # what the user gave, before the weights
            raise FileNotFoundError(f"{name} {path} does not exist"
                                    + ("; give the folder `sample --out` wrote (or an .npz)" if name == "--samples" else
                                       " (e.g. VIRTUAL_imagenet256_labeled.npz from openaipublic.blob.core.windows.net"
                                       "/diffusion/jul-2021/ref_batches/imagenet/256/)" if name == "--reference" else ""))
    try:   # before any work: the inputs, then the weights
        weights = inception_weights(args.inception_weights)
    except (MissingWeightsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = api.fidelity(args.reference, args.samples, args.run, args.checkpoint, args.method, args.preset, args.out,
                       args.overrides, str(weights), args.metrics, args.results, args.batch_size, args.device)
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


def cmd_report(args) -> int:
    from benchmark.results.report import build_report
    root = Path(__file__).resolve().parent.parent / "results"
    if not Path(args.results).is_dir():
        raise ConfigError(f"--results {args.results} is not a folder; run `python -m benchmark run` first or give "
                          "the folder a run wrote (paths.results)")
    out = build_report(args.results, args.out or Path(args.results) / "report.html", root / "paper_results.csv",
                       root / "reference" if args.with_reference else None)
    print(f"report: {out}")
    return 0


def cmd_validate_evaluator(args) -> int:
    from benchmark.io import atomic_write, write_text
    from benchmark.metrics import factors, validation
    for name in ("samples", "repeats"):
        if getattr(args, name) < 2:
            raise ConfigError(f"--{name}={getattr(args, name)} is too small; use at least 2 (default 800 / 5)")
    weights = factors.evaluator_weights(args.variant, Path(args.cache) / "evaluators")
    table = validation.validate(weights, n=args.samples, repeats=args.repeats, variant=args.variant)
    out = Path(args.results)
    atomic_write(out / "evaluator_validation.csv", lambda tmp: table.to_csv(tmp, index=False))
    text = validation.markdown(table)
    write_text(out / "evaluator_validation.md",
               f"# The evaluator against broken generators\n\n`python -m benchmark validate-evaluator --samples "
               f"{args.samples} --repeats {args.repeats} --variant {args.variant}`, evaluator `{weights.name}`. "
               f"Bold: the metric moved the bad way by more than {validation.MARGIN:g} times its real-vs-real range; "
               "✓ / ✗: a metric meant to catch that breakage did / did not.\n\n" + text)
    print(text + f"tables: {out / 'evaluator_validation.md'}, {out / 'evaluator_validation.csv'}")
    verdict = validation.judge(table)
    missed = verdict[verdict.must_catch & ~verdict.caught]
    for _, m in missed.iterrows():
        print(f"NOT CAUGHT: {m.set} by {m.metric} (moved {m.moved_spreads:.1f} spreads)", file=sys.stderr)
    return 1 if len(missed) else 0


def cmd_bench(args) -> int:
    from benchmark.bench import bench
    bench(args.methods, args.shapes, args.official, args.batch_size, args.train_batch, args.repeats,
          not args.no_series, args.out, args.overrides, args.dtype)
    return 0


def cmd_reproduce(args) -> int:
    from benchmark import api
    api.reproduce(args.table, args.checkpoints, args.reference, args.reference_512, args.inception_weights,
                  args.samples_per_class, args.results, args.executor, args.cluster, args.only, args.overrides,
                  args.dry_run)
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "sample": cmd_sample, "train-tokenizer": cmd_train_tokenizer,
            "evaluate": cmd_evaluate, "prefetch": cmd_prefetch, "collect": cmd_collect, "status": cmd_status,
            "validate-evaluator": cmd_validate_evaluator, "report": cmd_report, "reproduce": cmd_reproduce,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:   # key=value overrides after options (argparse leaves them over): as run takes them
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides or []) + extra
    import os
    import shlex

    from benchmark.provenance import COMMAND_ENV
    os.environ[COMMAND_ENV] = ("python -m benchmark " + " ".join(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else argv)))   # what records name as their command
    try:
        split_overrides(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:   # training saved a checkpoint at the step it was on
        print("\ninterrupted: finished stages and the training checkpoint are kept; run the same command "
              "again to resume", file=sys.stderr)
        return 130
    except (ConfigError, UnknownNameError, PluginImportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:   # anything else: one line; the traceback on request
        if os.environ.get("SCALEWISE_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {err}\n(set SCALEWISE_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
