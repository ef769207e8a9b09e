"""A sweep is presets x methods x seeds. Its jobs come in groups, each waiting for the one before:

    prepare  (tokenizer + latents; one job per distinct tokenizer, shared by methods and seeds)
    train    (one job per preset x method x seed)
    evaluate (one job per preset x method x seed; job i needs train job i)

Every job is a picklable callable (run in this process, by submitit's LocalExecutor or as a
Slurm array task) and every stage is cached by config hash, so rerunning a sweep redoes only
what is missing, and a requeued job picks up where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import distributed, results
from benchmark.evaluation import finished_evaluation
from benchmark.keys import shipped_dir, tokenizer_key
from benchmark.stages import STAGES
from methods.plugins import import_plugins

GROUPS = {"prepare": ("tokenizer", "latents"), "train": ("train",), "evaluate": ("evaluate",)}


@dataclass
class Job(submitit.helpers.Checkpointable):
    """Runs ``stages`` of ``method`` under ``cfg``. On preemption or time-out submitit calls
    ``checkpoint`` (the default: requeue this very job); the rerun skips finished stages and
    resumes training from the checkpoint the trainer saved on the signal."""
    cfg: DictConfig
    method: str
    stages: tuple[str, ...] = tuple(STAGES)
    needs: str | None = None    # the name of the job this one waits for (same sweep)
    redo_evaluate: bool = False  # evaluate even if this evaluation's record exists

    @property
    def name(self) -> str:
        group = next((g for g, s in GROUPS.items() if self.stages[0] in s), self.stages[0])
        return f"{self.cfg.preset}/{self.method}/seed{self.cfg.seed}/{group}"

    def __call__(self) -> list[str]:
        """Runs the stages in order; returns the last stage's outputs (the records after
        `evaluate`, one per row) as strings."""
        distributed.take_sigint()
        import_plugins(self.cfg.custom_imports)   # a plug-in method registers in this process too
        distributed.setup()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.set_flush_denormal(True)  # tiny weights/optimizer states must not hit the slow denormal path on CPU
        timings, out = {}, None
        for name in self.stages:
            start = time.time()
            done = finished_evaluation(self.cfg, self.method) if name == "evaluate" else None
            if done and not self.redo_evaluate:   # finished work is not redone
                out = done
            else:
                out = STAGES[name](self.cfg, self.method)
            timings[name] = time.time() - start
        if distributed.is_main():
            print(f"[{self.name}] done in {sum(timings.values()):.0f}s "
                  + " ".join(f"{k}={v:.0f}s" for k, v in timings.items()), flush=True)
        return [str(o) for o in (out if isinstance(out, list) else [out])]


@dataclass
class Group:
    name: str
    jobs: list[Job] = field(default_factory=list)


@dataclass
class Collect(submitit.helpers.Checkpointable):
    """The sweep's last job: rebuild the leaderboard from whatever records exist."""
    results_dir: str

    def __call__(self) -> str:
        frame = collect(self.results_dir)
        return f"{len(frame)} leaderboard rows in {self.results_dir}"


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """Jobs may run in another working directory (a Slurm node): pin the paths."""
    paths = {k: str(Path(v).resolve()) for k, v in OmegaConf.to_container(cfg.paths).items() if k != "shipped"}
    shipped = shipped_dir(cfg)
    return OmegaConf.merge(cfg, {"paths": {**paths, "shipped": str(shipped.resolve()) if shipped else "none"}})


def plan(configs: list[DictConfig], methods: list[str], seeds: list[int] | None,
         stage_names: tuple[str, ...] = tuple(STAGES), redo_evaluate: bool = False) -> list[Group]:
    """The sweep's groups, in order, holding only the requested stages (empty groups dropped)."""
    groups = {name: Group(name) for name in GROUPS}
    prepared: dict[tuple, Job] = {}
    for cfg in configs:
        cfg = absolute_paths(cfg)
        for method in methods:
            prep_stages = tuple(s for s in GROUPS["prepare"] if s in stage_names)
            key = (cfg.paths.cache, tokenizer_key(cfg, method))
            if prep_stages and key not in prepared:
                prepared[key] = Job(cfg, method, prep_stages)
                groups["prepare"].jobs.append(prepared[key])
            for seed in seeds or [cfg.seed]:
                seeded = OmegaConf.merge(cfg, {"seed": seed})
                before = prepared[key].name if key in prepared else None
                for group in ("train", "evaluate"):
                    if group in stage_names:
                        job = Job(seeded, method, GROUPS[group], needs=before, redo_evaluate=redo_evaluate)
                        groups[group].jobs.append(job)
                        before = job.name
    return [g for g in groups.values() if g.jobs]


def collect(results_dir: str | Path) -> "object":
    """Rebuild the leaderboard, summary and plots from every record under results/records."""
    results_dir = Path(results_dir)
    frame = results.rebuild_leaderboard(results_dir / "records", results_dir)
    if len(frame):
        results.plot_leaderboard(frame, results_dir / "plots")
        records, _ = results.read_records(results_dir / "records")
        results.save_side_by_side(records, results_dir / "grids")
    return frame
