"""DDP on CPU: two gloo processes started the way a 2-task Slurm job starts them (one process
per task, rank and world from the environment), through the suite's own CLI. Training with the
global batch split over the ranks follows the single-process loss curve; sampling split over
the ranks makes the very same images (so the same scores)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark import distributed

# VAR with no label drop and no drop path: its loss is a function of the batch alone, so a
# two-rank step must equal the single-process step (stochastic losses draw per-rank streams).
SETTINGS = ["var.cond_drop_rate=0.0", "var.drop_path_rate=0.0", "threads=1", "train.steps=12",
            "train.checkpoint_every=6", "train.log_every=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark", *args], env={**os.environ, **(env or {})},
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    shared = [f"paths.cache={root}/cache", "--preset", "smoke", *SETTINGS]
    single = [f"paths.runs={root}/single", f"paths.results={root}/single_results", *shared]
    assert main(["run", "--methods", "var", "--executor", "inline", *single]) == 0
    port = free_port()
    procs = [cli(["run", "--methods", "var", "--executor", "inline", "--stages", "train", "evaluate",
                  f"paths.runs={root}/ddp", f"paths.results={root}/ddp_results", *shared],
                 env={"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": str(port)}) for r in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return root


def test_two_rank_training_follows_the_single_process_loss(runs):
    single, ddp = (next((runs / d / "smoke").glob("var-*/seed0")) for d in ("single", "ddp"))
    assert single.name == ddp.name and single.parent.name == ddp.parent.name   # same config, same run key
    t1, t2 = (json.loads((d / "train.json").read_text()) for d in (single, ddp))
    assert (t1["processes"], t2["processes"]) == (1, 2)
    h1, h2 = t1["history"], t2["history"]
    assert [s for s, _ in h1] == [s for s, _ in h2]
    assert [l for _, l in h2] == pytest.approx([l for _, l in h1], rel=1e-5)
    w1, w2 = load_file(str(single / "ema.safetensors")), load_file(str(ddp / "ema.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


def test_two_rank_sampling_makes_the_same_images(runs):
    r1, r2 = (json.loads(next((runs / d / "records").glob("*.json")).read_text())
              for d in ("single_results", "ddp_results"))
    assert (r1["protocol"]["processes"], r2["protocol"]["processes"]) == (1, 2)
    # Same weights (up to float noise) and per-index seeds: the scores of the samples agree.
    assert r2["metrics"]["class_consistency"] == pytest.approx(r1["metrics"]["class_consistency"], abs=1e-9)
    assert r2["metrics"]["domain_fd"] == pytest.approx(r1["metrics"]["domain_fd"], rel=1e-3)


def test_shard_splits_indices_contiguously_and_refuses_uneven_batches(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(list(distributed.shard(range(10), total=10)))
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch size divisible by 3"):
        distributed.shard(torch.arange(16))
