"""Against a real one-node Slurm cluster (jobs/slurm/one_node.sh: Debian's slurm-wlm + munge
on localhost), through the suite's own CLI: a sweep submitted as job arrays, and a training
job preempted with Slurm's warning signal that requeues, resumes and ends where an
uninterrupted run ends.

Skipped where no Slurm is running: the tests install and start nothing (.ci/run does, with
jobs/slurm/one_node.sh)."""
import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent


def slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm():
    """A running one-node Slurm (.ci/run starts one); the tests install and start nothing."""
    if not slurm_up():
        pytest.skip("no running Slurm here; start the one-node cluster with `sudo bash jobs/slurm/one_node.sh` "
                    "(.ci/run does) to run these tests")
    yield


def release_requeued(job_id: str, timeout: float = 120) -> None:
    """Slurm holds a requeued job until 120 s after the requeue (reason BeginTime); start it now
    rather than make the test wait. Returns early if the job never shows that hold."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        if "BeginTime" in out:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        if out.split()[:1] in (["COMPLETED"], ["FAILED"], []):
            return
        time.sleep(0.2)


def paths(root: Path) -> list[str]:
    return [f"paths.runs={root}/runs", f"paths.cache={root}/cache", f"paths.results={root}/results"]


def test_sweep_as_job_arrays(slurm, tmp_path, capsys):
    """2 methods x 2 seeds: prepare, train and evaluate arrays, then the leaderboard."""
    args = ["run", "--methods", "var", "flowar", "--seeds", "0", "1", "--preset", "smoke", "--cluster", "one-node",
            *paths(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "submitted 10 job(s) in 3 array(s)" in out
    board = pd.read_csv(tmp_path / "results" / "leaderboard.csv")
    assert sorted(zip(board.method, board.seed)) == [("flowar", 0), ("flowar", 1), ("var", 0), ("var", 1)]
    assert board.class_consistency.between(0, 1).all()
    sweep_dir = next((tmp_path / "runs" / "sweeps").iterdir())
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert [g["name"] for g in sweep["groups"]] == ["prepare", "train", "evaluate"]
    assert [len(g["jobs"]) for g in sweep["groups"]] == [2, 4, 4]
    # Every job of an array shares the array's id.
    assert all(j["job_id"].startswith(g["array_id"] + "_") for g in sweep["groups"] for j in g["jobs"])
    assert main(["status", str(sweep_dir)]) == 0
    assert capsys.readouterr().out.count("COMPLETED") == 11   # 10 jobs + the collect job
    # Rerunning the sweep redoes nothing: every job finds its stage's output by config hash.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "smoke").rglob("ema.safetensors")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_preempted_training_requeues_and_ends_as_an_uninterrupted_run(slurm, tmp_path):
    settings = ["--preset", "smoke", "--methods", "var", "train.steps=600", "train.checkpoint_every=100",
                f"paths.cache={tmp_path}/cache", f"paths.results={tmp_path}/results", "threads=1"]
    assert main(["run", "--executor", "inline", "--stages", "tokenizer", "latents", "train",
                 *settings, f"paths.runs={tmp_path}/straight"]) == 0

    assert main(["run", "--cluster", "one-node", "--stages", "train", "--no-wait", *settings,
                 f"paths.runs={tmp_path}/preempted"]) == 0
    sweep_dir = next((tmp_path / "preempted" / "sweeps").iterdir())
    job = json.loads((sweep_dir / "sweep.json").read_text())["groups"][0]["jobs"][0]
    run_dir = next((tmp_path / "preempted" / "smoke").glob("var-*/seed0"), None)
    deadline = time.time() + 300
    while not (run_dir and (run_dir / "checkpoint-last.pt").exists()):   # training is under way
        assert time.time() < deadline, Path(job["stderr"]).read_text() if Path(job["stderr"]).exists() else "no log"
        time.sleep(0.2)
        run_dir = next((tmp_path / "preempted" / "smoke").glob("var-*/seed0"), None)
    # What Slurm sends ahead of a time limit or preemption (submitit asks for SIGUSR2).
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)
    release_requeued(job["job_id"])
    assert main(["status", "--wait", str(sweep_dir)]) == 0

    log = Path(job["stderr"]).read_text() + Path(job["stdout"]).read_text()
    assert "SIGUSR2 received; checkpoint saved at step" in log
    assert "resumed from step" in log
    straight = next((tmp_path / "straight" / "smoke").glob("var-*/seed0"))
    assert straight.parent.name == run_dir.parent.name
    a, b = load_file(str(straight / "ema.safetensors")), load_file(str(run_dir / "ema.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    h1, h2 = (json.loads((d / "train.json").read_text())["history"] for d in (straight, run_dir))
    assert [s for s, _ in h2] == [s for s, _ in h1]
    assert [l for _, l in h2] == pytest.approx([l for _, l in h1], rel=1e-6)


def test_two_task_job_trains_with_ddp_like_one_process(slurm, tmp_path):
    """One Slurm job with two tasks: the ranks and the master come from submitit's job
    environment (no torchrun), the two gloo processes split each batch, and the loss curve and
    weights equal a single-process run's (VAR without label drop: a deterministic loss)."""
    settings = ["--preset", "smoke", "--methods", "var", "var.cond_drop_rate=0.0", "var.drop_path_rate=0.0",
                "threads=1", "train.steps=12", f"paths.cache={tmp_path}/cache", f"paths.results={tmp_path}/results"]
    assert main(["run", "--executor", "inline", "--stages", "tokenizer", "latents", "train", *settings,
                 f"paths.runs={tmp_path}/single"]) == 0
    assert main(["run", "--cluster", "one-node", "--stages", "train", "jobs.tasks_per_node=2", *settings,
                 f"paths.runs={tmp_path}/ddp"]) == 0
    single, ddp = (next((tmp_path / d / "smoke").glob("var-*/seed0")) for d in ("single", "ddp"))
    t1, t2 = (json.loads((d / "train.json").read_text()) for d in (single, ddp))
    assert (t1["processes"], t2["processes"]) == (1, 2)
    assert [l for _, l in t2["history"]] == pytest.approx([l for _, l in t1["history"]], rel=1e-5)
    a, b = load_file(str(single / "ema.safetensors")), load_file(str(ddp / "ema.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
