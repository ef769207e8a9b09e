"""The harness as a Python API; the command line (benchmark/cli.py) is a thin layer over it.

    from benchmark import run, evaluate, collect
    board = run(["flowar", "var"], preset="smoke")          # train, sample, evaluate: a DataFrame
    board[["method", "class_consistency", "domain_fd"]]
    evaluate(run_dir="runs/smoke/var-<hash>/seed0")          # a run directory's rows again
    collect("results")                                       # the whole leaderboard from the records

Every function returns leaderboard rows as a pandas DataFrame (columns: results/README.md).
``run``'s frame carries ``attrs["failed"]`` (jobs that did not finish, with their error line)
and ``attrs["sweep"]`` (the sweep folder, for `status`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from benchmark.config import ConfigError, load_config, load_saved
from methods.registry import METHODS, lookup

ALL_STAGES = ("tokenizer", "latents", "train", "evaluate")


def configs(presets: Sequence[str], overrides: Sequence[str] = (), cluster: str | None = None,
            executor: str | None = None) -> list:
    """One validated config per preset (``executor`` overrides ``jobs.executor``)."""
    extra = [f"jobs.executor={executor}"] if executor else []
    return [load_config(p, list(overrides) + extra, cluster) for p in presets]


def plan(methods: Sequence[str], presets: Sequence[str] = ("tiny",), seeds: Sequence[int] | None = None,
         stages: Sequence[str] = ALL_STAGES, overrides: Sequence[str] = (), cluster: str | None = None,
         executor: str | None = None, redo_evaluate: bool = False):
    """(job groups, first config) of a sweep, every input checked before any work."""
    from jobs.sweep import plan as plan_groups
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from: {', '.join(ALL_STAGES)}")
    for name, values in (("--methods", list(methods)), ("--seeds", list(seeds or [])), ("--preset", list(presets))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{name} lists {', '.join(repeated)} twice; give each once (two jobs would share one "
                              "run directory)")
    for m in methods:
        if "." in m or "=" in m:
            raise ConfigError(f"--methods {m}: not a method name; a config override is key=value (e.g. "
                              f"{m.split('=')[0]}=5) after the methods")
    cfgs = configs(presets, overrides, cluster, executor)   # imports the config's plug-ins first
    for m in methods:
        lookup(METHODS, m)
    if any(c.data.name == "imagefolder" and not c.data.root for c in cfgs):
        raise ConfigError("data.root is not set; imagefolder needs data.root=/path/to/folder")
    from benchmark.preflight import preflight
    preflight(cfgs, list(methods), tuple(stages))
    if "evaluate" in stages:   # an image folder is scored with Inception metrics: its inputs exist now
        for c in {id(c.data): c for c in cfgs if c.data.name != "shapes"}.values():
            from benchmark.evaluation import inception_inputs
            inception_inputs(c)
    return plan_groups(cfgs, list(methods), list(seeds) if seeds else None, tuple(stages), redo_evaluate), cfgs[0]


def run(methods: Sequence[str], preset: str | Sequence[str] = "tiny", seeds: Sequence[int] | None = None,
        stages: Sequence[str] = ALL_STAGES, overrides: Sequence[str] = (), executor: str | None = None,
        cluster: str | None = None, redo_evaluate: bool = False, wait: bool = True) -> pd.DataFrame:
    """Train, sample and evaluate ``methods`` (presets x methods x seeds); the leaderboard rows
    this run wrote. ``executor``: inline (this process), local (subprocesses) or slurm."""
    from jobs import executors
    from jobs.status import FINISHED, wait as wait_for
    presets = [preset] if isinstance(preset, str) else list(preset)
    groups, cfg = plan(methods, presets, seeds, stages, overrides, cluster, executor, redo_evaluate)
    executor, folder = cfg.jobs.executor, None
    if executor == "inline":   # errors raise here (for a debugger)
        jobs = [j for g in groups for j in g.jobs]
        rows = [{"job": j.name, "state": FINISHED, "detail": ", ".join(j())} for j in jobs]
    else:
        folder = executors.sweep_folder(cfg)
        save = lambda r: executors.write_sweep(folder, cfg, executor, r, sys.argv)
        if executor == "slurm":
            record = executors.submit_slurm(groups, cfg, folder)
            print(f"submitted {sum(len(g.jobs) for g in groups)} job(s) in {len(groups)} array(s): "
                  + ", ".join(f"{g['name']}={g['array_id']}" for g in record["groups"]), flush=True)
        else:
            record = executors.run_local(groups, cfg, folder, save=save)
        save(record)
        if not wait:
            return frame_of([], cfg.paths.results, [], folder)
        rows = wait_for(folder, poll_s=2.0 if executor == "slurm" else 0.1,
                        log=print if executor == "slurm" else (lambda *_: None))
    records = [p for r in rows if r["state"] == FINISHED for p in r["detail"].split(", ") if p.endswith(".json")]
    failed = [r for r in rows if r["state"] != FINISHED]
    return frame_of(records, cfg.paths.results if "evaluate" in stages else None, failed, folder)


def frame_of(records: list[str], results_dir: str | None, failed: list[dict], sweep: Path | None) -> pd.DataFrame:
    """The leaderboard rebuilt, restricted to ``records``; with the failures and sweep as attrs."""
    board = collect(results_dir) if results_dir and records else pd.DataFrame()
    hashes = {json.loads(Path(r).read_text())["config_hash"] for r in records if Path(r).exists()}
    mine = board[board.config_hash.isin(hashes)].reset_index(drop=True) if len(board) else board
    mine.attrs.update(failed=failed, sweep=sweep, records=records)
    return mine


def collect(results_dir: str | Path = "results") -> pd.DataFrame:
    """Rebuild the leaderboard, its summary and plots from every record under ``results_dir``."""
    from jobs.sweep import collect as rebuild
    return rebuild(results_dir)


def run_config(run_dir: str | Path, overrides: Sequence[str] = ()):
    """(config, method) of a run directory, from its config.yaml as the run wrote it."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} has no config.yaml: pass a run directory such as runs/tiny/var-<hash>/seed0")
    method = run_dir.parent.name.rsplit("-", 1)[0]
    cfg = load_saved(run_dir / "config.yaml", list(overrides))
    lookup(METHODS, method)
    return cfg, method


def evaluate(run_dir: str | Path, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """A run directory's domain evaluation (on `shapes`), as its run's evaluate stage; its rows."""
    from benchmark.evaluation import evaluate_method
    cfg, method = run_config(run_dir, overrides)
    if cfg.data.name != "shapes":
        raise ConfigError(f"{run_dir} trained on {cfg.data.name}: score it with Inception metrics "
                          "(python -m benchmark evaluate --run DIR --reference REF)")
    records = [str(p) for p in evaluate_method(cfg, method)]
    return frame_of(records, cfg.paths.results, [], None)


def fidelity(reference: str, samples: str | Path | None = None, run_dir: str | Path | None = None,
             checkpoint: str | Path | None = None, method: str | None = None, preset: str = "tiny",
             out: str | Path | None = None, overrides: Sequence[str] = (), inception_weights: str | None = None,
             metrics: Sequence[str] = ("isc", "fid", "kid", "prc"), results: str = "results", batch_size: int = 50,
             device: str = "auto") -> Path:
    """torch-fidelity's FID / IS / KID / precision-recall of samples (a folder or npz), of a run
    directory or of a checkpoint (sampled first, resumably) against ``reference`` (an ADM npz, a
    folder, or ``dataset``). The Inception weights are found before any work. The record's path."""
    from benchmark.distributed import resolve_device
    from benchmark.metrics.fidelity import evaluate_folder, inception_weights as find_weights
    from benchmark.sample import sample_to_folder
    if samples and not Path(samples).exists():   # what the user gave first, then the reference, then the weights
        raise FileNotFoundError(f"--samples {samples} does not exist; give the folder `sample --out` wrote (or an .npz)")
    if reference != "dataset" and not Path(reference).exists():
        raise FileNotFoundError(f"reference batch {reference} does not exist (e.g. VIRTUAL_imagenet256_labeled.npz from "
                                "openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/)")
    weights = find_weights(inception_weights)
    cfg = None
    if run_dir:
        cfg, method = run_config(run_dir, overrides)
        checkpoint = Path(run_dir) / f"{cfg.eval.weights}.safetensors"
        out = Path(out or Path(run_dir) / "samples")
    elif checkpoint:
        lookup(METHODS, method)
        cfg = load_config(preset, list(overrides))
        out = Path(out or Path(cfg.paths.runs) / "samples" / Path(checkpoint).stem)
    if reference == "dataset":
        from benchmark.evaluation import dataset_reference
        reference = str(dataset_reference(cfg or load_config(preset, list(overrides))))
    if not samples:
        sample_to_folder(cfg, method, checkpoint, out, cfg.data.num_classes, ema=cfg.eval.weights == "ema")
        samples = out
    return evaluate_folder(samples, reference, weights, results, tuple(metrics), batch_size,
                           resolve_device(device).type)


def reproduce(name: str, checkpoints: str | Path, reference: str | None = None, reference_512: str | None = None,
              inception_weights: str | None = None, samples_per_class: int = 50, results: str = "results",
              executor: str | None = None, cluster: str | None = None, only: Sequence[str] = (),
              overrides: Sequence[str] = (), dry_run: bool = False) -> Path:
    """A paper table (benchmark/reproduce.py TABLES) from the released checkpoints in
    ``checkpoints``: every row's inputs are checked and its config validated before any work,
    then one job per row samples (resumable) and scores; the table of published against
    measured figures is written to ``<results>/reproduce/<name>.md`` / ``.csv``."""
    from benchmark.reproduce import plan_table, write_table
    from jobs import executors
    from jobs.status import FINISHED, wait as wait_for
    from jobs.sweep import Group
    plan = plan_table(name, checkpoints, {256: reference, 512: reference_512}, inception_weights, samples_per_class,
                      results, executor, cluster, only, overrides)
    records = []
    if plan.jobs:
        cfg, groups = plan.jobs[0].cfg, [Group("reproduce", plan.jobs)]
        if dry_run:
            print(executors.dry_run(groups, cfg) if cfg.jobs.executor == "slurm" else
                  "\n".join(f"{j.name}: {j.row.preset} {' '.join(j.row.overrides)} -> {j.out}" for j in plan.jobs))
            return Path(results) / "reproduce" / f"{name}.md"
        if cfg.jobs.executor == "inline":
            records = [p for job in plan.jobs for p in job()]
        else:
            folder = executors.sweep_folder(cfg)
            save = lambda r: executors.write_sweep(folder, cfg, cfg.jobs.executor, r, sys.argv)
            save(executors.submit_slurm(groups, cfg, folder) if cfg.jobs.executor == "slurm"
                 else executors.run_local(groups, cfg, folder, save=save))
            done = wait_for(folder, poll_s=2.0 if cfg.jobs.executor == "slurm" else 0.1, log=lambda *_: None)
            records = [p for r in done if r["state"] == FINISHED for p in r["detail"].split(", ") if p.endswith(".json")]
    path = write_table(name, plan, records, Path(results) / "reproduce")
    print(path.read_text())
    return path
