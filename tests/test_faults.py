"""Faults with real processes and real signals: a process killed in the middle of a checkpoint
write, a local job killed without a result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

WRITER = """
import sys, time, torch
from pathlib import Path
from benchmark.io import atomic_write, save_torch
path = Path(sys.argv[1])
save_torch({"step": 1, "w": torch.ones(4)}, path)                 # the last whole checkpoint
def half_then_hang(tmp):
    with open(tmp, "wb") as f:
        f.write(b"PK\\x03\\x04 half a zip")
        f.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(path, half_then_hang)                                  # killed in here
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_the_rerun_cleans_up(tmp_path):
    from benchmark.config import load_config
    from benchmark.trainer import Trainer
    path = tmp_path / "checkpoint-last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stale = list(tmp_path.glob(".checkpoint-last.pt.*.tmp"))
    assert len(stale) == 1                                              # the cut-short write
    assert torch.load(path, weights_only=True)["step"] == 1            # the previous checkpoint is whole
    # The rerun: the trainer removes the stale file before reading its checkpoint.
    model = torch.nn.Linear(2, 2)
    cfg = load_config("smoke", ["train.steps=1"]).train
    trainer = Trainer(model, lambda step, g: model.weight.sum(), cfg, tmp_path, device="cpu")
    try:
        trainer.resume()
    except RuntimeError as err:                                         # the test file is not a trainer checkpoint
        assert "cannot resume" in str(err)
    assert not list(tmp_path.glob(".checkpoint-last.pt.*.tmp"))


def test_status_of_a_local_job_killed_without_a_result_is_lost_not_running(tmp_path, capsys):
    from benchmark.cli import main
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sweep = tmp_path / "sweep"
    (sweep / "logs").mkdir(parents=True)
    stderr = sweep / "logs" / f"{proc.pid}_0_log.err"
    stderr.write_text("train var: 10%\n")
    job = {"name": "tiny/var/seed0/train", "job_id": str(proc.pid), "stdout": "", "stderr": str(stderr),
           "result": str(sweep / "logs" / f"{proc.pid}_0_result.pkl")}
    (sweep / "sweep.json").write_text(json.dumps({"executor": "local", "groups": [{"name": "train", "jobs": [job]}]}))
    assert main(["status", str(sweep)]) == 1
    assert "RUNNING" in capsys.readouterr().out
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.1)
    assert main(["status", str(sweep)]) == 1
    out = capsys.readouterr().out
    assert "LOST" in out and "ended without a result" in out


def test_sigterm_to_a_local_sweep_stops_its_job_with_a_checkpoint(tmp_path):
    """`kill PID` (or `timeout`) of the client: its local job checkpoints at the end of its step
    and ends, instead of training on with the client gone; the rerun resumes from there."""
    paths = [f"paths.runs={tmp_path / 'runs'}", f"paths.cache={tmp_path / 'cache'}",
             f"paths.results={tmp_path / 'results'}"]
    cmd = [sys.executable, "-m", "benchmark", "run", "--methods", "var", "--preset", "smoke", "--executor", "local",
           "--stages", "tokenizer", "latents", "train", "train.steps=100000", "train.checkpoint_every=100000",
           "train.log_every=1", *paths]
    client = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / "runs").glob("smoke/var-*/seed0/config.yaml")) and time.time() < deadline:
        time.sleep(0.5)                                                  # training has started
    time.sleep(3)
    client.send_signal(signal.SIGTERM)
    out, _ = client.communicate(timeout=240)
    sweep = json.loads(next((tmp_path / "runs" / "sweeps").glob("*/sweep.json")).read_text())
    pids = [int(j["job_id"]) for g in sweep["groups"] for j in g["jobs"]]
    for pid in pids:                                                     # no job left training
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"job {pid} still running after the client ended:\n{out}"
    ckpt = torch.load(next((tmp_path / "runs").glob("smoke/var-*/seed0/checkpoint-last.pt")), weights_only=True)
    assert 0 < ckpt["step"] < 100000 and client.returncode != 0
    assert "SIGTERM: stopping 1 job(s)" in out and "Traceback" not in out, out


def test_sigterm_to_a_local_job_process_stops_it_with_a_checkpoint(tmp_path):
    """`kill <job pid>`: submitit only logs SIGTERM ("Bypassing signal SIGTERM") and the job
    would train on; it checkpoints at the end of its step, stops, and the client says so."""
    paths = [f"paths.runs={tmp_path / 'runs'}", f"paths.cache={tmp_path / 'cache'}",
             f"paths.results={tmp_path / 'results'}"]
    cmd = [sys.executable, "-m", "benchmark", "run", "--methods", "var", "--preset", "smoke", "--executor", "local",
           "--stages", "tokenizer", "latents", "train", "train.steps=100000", "train.checkpoint_every=100000",
           "train.log_every=1", *paths]
    client = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / "runs").glob("smoke/var-*/seed0/config.yaml")) and time.time() < deadline:
        time.sleep(0.5)                                                  # training has started
    time.sleep(3)
    sweep = json.loads(next((tmp_path / "runs" / "sweeps").glob("*/sweep.json")).read_text())
    job = int(sweep["groups"][-1]["jobs"][0]["job_id"])
    os.kill(job, signal.SIGTERM)
    out, _ = client.communicate(timeout=240)
    ckpt = torch.load(next((tmp_path / "runs").glob("smoke/var-*/seed0/checkpoint-last.pt")), weights_only=True)
    assert 0 < ckpt["step"] < 100000 and client.returncode != 0
    assert "SIGTERM: stopped with a checkpoint at step" in out and "run the same command again" in out


def test_ctrl_c_stops_a_local_sweep_quietly_and_the_rerun_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """Ctrl-C in the terminal (SIGINT to the whole process group: the client, submitit's
    controller and the job) mid-training: the job checkpoints at the end of its step, every
    process ends, no traceback reaches the terminal; the same command again resumes and ends
    with the weights, tensor for tensor, of a run never stopped."""
    from methods.checkpoints import load_safetensors
    steps = 600

    def command(folder):
        return [sys.executable, "-m", "benchmark", "run", "--methods", "var", "--preset", "smoke", "--executor",
                "local", "--stages", "tokenizer", "latents", "train", f"train.steps={steps}",
                "train.checkpoint_every=20", "train.log_every=1", f"paths.runs={folder / 'runs'}",
                f"paths.cache={tmp_path / 'cache'}", f"paths.results={folder / 'results'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = subprocess.run(command(tmp_path / "a"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    client = subprocess.Popen(command(tmp_path / "b"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not list((tmp_path / "b" / "runs").glob("smoke/var-*/seed0/checkpoint-last.pt")) and time.time() < deadline:
        time.sleep(0.05)                                                 # the first periodic checkpoint: training runs
    os.killpg(client.pid, signal.SIGINT)                                 # what the terminal does on Ctrl-C
    out, _ = client.communicate(timeout=240)
    assert client.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "SIGINT: stopping 1 job(s)" in out and "run the same command again to resume" in out
    deadline = time.time() + 30
    while time.time() < deadline:                                        # the controller ends once its job has
        try:
            os.killpg(client.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"processes of the sweep still running after Ctrl-C:\n{out}")
    run_b = next((tmp_path / "b" / "runs").glob("smoke/var-*/seed0"))
    stopped_at = torch.load(run_b / "checkpoint-last.pt", weights_only=True)["step"]
    assert 20 <= stopped_at < steps and not (run_b / "ema.safetensors").exists(), out
    rerun = subprocess.run(command(tmp_path / "b"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    run_a = next((tmp_path / "a" / "runs").glob("smoke/var-*/seed0"))
    assert run_a.name == run_b.name
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_safetensors(run_a / name), load_safetensors(run_b / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resuming at step {stopped_at}"


FULL_DISK_WRITER = """
import resource, signal, sys, torch
from pathlib import Path
from benchmark.io import DiskFullError, save_torch, write_text
path = Path(sys.argv[1])
save_torch({"step": 1, "w": torch.ones(4)}, path)                 # the last whole checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                      # past the limit, write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))     # the disk fills at 100 kB
try:
    save_torch({"step": 2, "w": torch.ones(1_000_000)}, path)   # torch's own writer
except DiskFullError as err:
    print(err)
try:
    write_text(path.parent / "record.json", "x" * 200_000)         # Python's write
except DiskFullError as err:
    print(err)
"""


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_says_what_to_do(tmp_path):
    path = tmp_path / "checkpoint-last.pt"
    out = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert f"could not write {path}" in out.stdout and "the previous checkpoint-last.pt is kept" in out.stdout
    assert "run the same command again" in out.stdout
    assert f"could not write {tmp_path / 'record.json'}: File too large" in out.stdout and "nothing was written" in out.stdout
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pt"]   # no temporary left


SWEEP_WRITER = """
import json, sys
from pathlib import Path
from benchmark.io import write_json
from benchmark.results.tables import rebuild_leaderboard
results, template, tag = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), sys.argv[3]
for i in range(6):
    record = dict(template, seed=1000 * int(tag) + i, run_dir=f"runs/{tag}/{i}")
    write_json(results / "records" / f"sweep{tag}_{i}.json", record)
    rebuild_leaderboard(results / "records", results)
"""


def test_two_sweeps_writing_one_results_folder_lose_no_row(tmp_path):
    """Two processes, each writing records and rebuilding the tables after every one (as two
    sweeps sharing paths.results): the final tables hold every row, none interleaved."""
    import pandas as pd
    template = next((ROOT / "results" / "reference" / "records").glob("tiny_var_*_seed0.json"))
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP_WRITER, str(tmp_path), str(template), tag], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
             for tag in ("1", "2")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert sorted(board["seed"]) == sorted(1000 * t + i for t in (1, 2) for i in range(6))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_corrupt_record_among_many_is_named_and_the_rest_aggregated(tmp_path):
    records = tmp_path / "results" / "records"
    records.mkdir(parents=True)
    good = sorted((ROOT / "results" / "reference" / "records").glob("tiny_*_seed0.json"))[:3]
    for path in good:
        (records / path.name).write_text(path.read_text())
    (records / "cut.json").write_text(good[0].read_text()[:200])                 # a write cut short
    proc = subprocess.run([sys.executable, "-m", "benchmark", "collect", "--results", str(tmp_path / "results")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "cut.json" in proc.stderr and "unreadable" in proc.stderr
    board = (tmp_path / "results" / "leaderboard.csv").read_text().strip().splitlines()
    assert len(board) == 1 + len(good)
