"""A sweep is methods x seeds; each job runs the stages of benchmark/stages.py in order.
Every stage is cached by config hash, so rerunning a sweep redoes only what is missing."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import results, stages


@dataclass
class Job:
    cfg: DictConfig
    method: str

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.cfg.seed}"

    def __call__(self) -> Path:
        """Tokenizer -> latents -> train -> evaluate; returns the record path."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        timings = {}
        for stage in (stages.train_tokenizer, stages.encode_latents, stages.train_method, stages.evaluate_method):
            start = time.time()
            out = stage(self.cfg, self.method)
            timings[stage.__name__] = time.time() - start
        print(f"[{self.name}] done in {sum(timings.values()):.0f}s "
              + " ".join(f"{k}={v:.0f}s" for k, v in timings.items()), flush=True)
        return out


def make_jobs(cfg: DictConfig, methods: list[str], seeds: list[int]) -> list[Job]:
    jobs = []
    for method in methods:
        for seed in seeds:
            job_cfg = OmegaConf.merge(cfg, {"seed": seed})
            jobs.append(Job(job_cfg, method))
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
