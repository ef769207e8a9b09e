"""A sweep is methods x seeds; each job runs the stages of benchmark/stages.py in order.
Every stage is cached by config hash, so rerunning a sweep redoes only what is missing."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import results, stages


STAGES = {"tokenizer": stages.train_tokenizer, "latents": stages.encode_latents,
          "train": stages.train_method, "evaluate": stages.evaluate_method}


@dataclass
class Job:
    cfg: DictConfig
    method: str
    stages: tuple[str, ...] = tuple(STAGES)

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.cfg.seed}"

    def __call__(self) -> Path:
        """Runs the stages in order (by default tokenizer -> latents -> train -> evaluate);
        returns the last stage's output (the record path after `evaluate`)."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.set_flush_denormal(True)  # tiny weights/optimizer states must not hit the slow denormal path on CPU
        timings = {}
        for name in self.stages:
            start = time.time()
            out = STAGES[name](self.cfg, self.method)
            timings[name] = time.time() - start
        print(f"[{self.name}] done in {sum(timings.values()):.0f}s "
              + " ".join(f"{k}={v:.0f}s" for k, v in timings.items()), flush=True)
        return out


def make_jobs(cfg: DictConfig, methods: list[str], seeds: list[int], stage_names=tuple(STAGES)) -> list[Job]:
    jobs = []
    for method in methods:
        for seed in seeds:
            jobs.append(Job(OmegaConf.merge(cfg, {"seed": seed}), method, tuple(stage_names)))
    return jobs


def run_inline(jobs: list[Job]) -> list[Path]:
    """Run jobs one after another in this process."""
    return [job() for job in jobs]


def collect(results_dir: str | Path) -> "object":
    """Rebuild the leaderboard, summary and plots from every record under results/records."""
    results_dir = Path(results_dir)
    frame = results.rebuild_leaderboard(results_dir / "records", results_dir)
    if len(frame):
        results.plot_leaderboard(frame, results_dir / "plots")
    return frame
