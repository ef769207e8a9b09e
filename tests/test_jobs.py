"""The job model without a cluster: the sweep plan, the dry run, the local executor's failure
handling, and records written by many processes at once."""
import json
import multiprocessing as mp
import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from benchmark import results
from benchmark.cli import main
from benchmark.config import ConfigError, load_config
from jobs import executors, status
from jobs.sweep import plan


def test_plan_shares_tokenizers_and_chains_jobs():
    cfg = load_config("smoke")
    groups = plan([cfg], ["var", "flowar", "flexvar"], [0, 1])
    assert [g.name for g in groups] == ["prepare", "train", "evaluate"]
    prepare, train, evaluate = groups
    assert len(prepare.jobs) == 3 and len(train.jobs) == len(evaluate.jobs) == 6   # one tokenizer per method
    assert all(Path(j.cfg.paths.runs).is_absolute() for g in groups for j in g.jobs)   # runs anywhere
    for t, e in zip(train.jobs, evaluate.jobs):    # evaluate i waits for train i
        assert e.needs == t.name and (t.method, t.cfg.seed) == (e.method, e.cfg.seed)
    assert [j.cfg.seed for j in train.jobs] == [0, 1] * 3
    assert executors.dependency(groups, 1, {"prepare": "11"}) == "afterok:11"
    assert executors.dependency(groups, 2, {"train": "12"}) == "aftercorr:12"
    only_train = plan([cfg], ["var"], None, ("train",))
    assert [g.name for g in only_train] == ["train"] and only_train[0].jobs[0].needs is None


def test_dry_run_prints_arrays_and_sbatch_resources(capsys, tmp_path):
    assert main(["run", "--methods", "var", "flowar", "--seeds", "0", "1", "--preset", "smoke", "--cluster",
                 "gpu-example", "--dry-run", f"paths.runs={tmp_path}", "jobs.account=proj1"]) == 0
    out = capsys.readouterr().out
    assert "== train: array of 4 job(s), 1 node(s) x 8 task(s) each" in out
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --account=proj1", "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@90"):
        assert line in out
    assert not (tmp_path / "sweeps").exists()   # nothing submitted, nothing written


def test_bad_cluster_and_seeds_are_named(capsys):
    with pytest.raises(ConfigError, match="cluster='nope' is unknown; choose one of: .*one-node"):
        load_config("smoke", [], "nope")
    assert main(["run", "--methods", "var", "--seeds", "0", "x1", "--preset", "smoke", "--dry-run"]) == 2
    assert "--seeds x1: seeds are integers" in capsys.readouterr().err


def test_local_executor_reports_a_failed_job_and_skips_what_needs_it(tmp_path, capsys):
    """VAR's tokenizer training diverges (the loss is not finite); VAR's training and evaluation
    are skipped, and FlowAR, which shares nothing with it, finishes."""
    args = ["run", "--methods", "var", "flowar", "--preset", "smoke", "--executor", "local",
            f"paths.runs={tmp_path}/runs", f"paths.cache={tmp_path}/cache", f"paths.results={tmp_path}/results",
            "msvq.lr=1e30"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "[smoke/var/seed0/prepare] FAILED" in captured.out and "loss is" in captured.out
    assert "[smoke/var/seed0/train] skipped: smoke/var/seed0/prepare failed" in captured.out
    assert "[smoke/var/seed0/evaluate] skipped: smoke/var/seed0/train failed" in captured.out
    sweep = status.find_sweep(None, f"{tmp_path}/runs")
    states = {r["job"]: r["state"] for r in status.status(sweep)}
    assert states == {"smoke/var/seed0/prepare": "FAILED", "smoke/flowar/seed0/prepare": "COMPLETED",
                      "smoke/var/seed0/train": "SKIPPED", "smoke/flowar/seed0/train": "COMPLETED",
                      "smoke/var/seed0/evaluate": "SKIPPED", "smoke/flowar/seed0/evaluate": "COMPLETED"}
    assert pd.read_csv(tmp_path / "results" / "leaderboard.csv").method.tolist() == ["flowar"]
    assert "3 job(s) did not finish" in captured.err


def _write_many(args):
    root, worker = args
    for i in range(20):
        record = {"method": f"m{worker}", "preset": "p", "seed": i, "config_hash": f"h{worker}", "created": "x",
                  "metrics": {"class_consistency": worker + i / 100}}
        results.write_record(Path(root) / f"w{worker}_{i}.json", record)
        results.write_record(Path(root) / "shared.json", record)   # all workers race on one file too
    return worker


def test_concurrent_record_writers_lose_nothing(tmp_path):
    root = tmp_path / "records"
    with mp.get_context("spawn").Pool(8) as pool:
        assert sorted(pool.map(_write_many, [(str(root), w) for w in range(8)])) == list(range(8))
    (root / "half.json").write_text('{"method": "x", "metr')   # a writer killed mid-file elsewhere
    records, skipped = results.read_records(root)
    assert len(records) == 8 * 20 + 1   # every record, and the raced file is one whole record
    assert [p.name for p, _ in skipped] == ["half.json"]
    assert not list(root.glob(".*.tmp"))
    assert set(results.records_to_frame(records).method) == {f"m{w}" for w in range(8)}
    assert json.loads((root / "shared.json").read_text())["method"] in {f"m{w}" for w in range(8)}


def test_local_jobs_see_the_gpus_the_run_uses(monkeypatch):
    """submitit hides every GPU from a local job unless asked: a CUDA run gets one GPU (or
    jobs.gpus_per_node, one task each); a CPU run none."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert executors.local_resources(load_config("smoke", ["device=cuda"])) == {"gpus_per_node": 1, "tasks_per_node": 1}
    assert executors.local_resources(load_config("smoke", ["device=auto", "jobs.gpus_per_node=2"])) == \
        {"gpus_per_node": 2, "tasks_per_node": 2}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert executors.local_resources(load_config("smoke", ["device=cuda"]))["visible_gpus"] == [2, 3]
    assert executors.local_resources(load_config("smoke", ["device=cpu", "jobs.tasks_per_node=2"])) == \
        {"tasks_per_node": 2}


def test_repeated_seeds_or_methods_and_an_empty_collect_are_refused(tmp_path, capsys):
    assert main(["run", "--methods", "var", "--seeds", "0", "0", "--preset", "smoke", "--dry-run"]) == 2
    assert "--seeds lists 0 twice" in capsys.readouterr().err
    assert main(["run", "--methods", "var", "var", "--preset", "smoke", "--dry-run"]) == 2
    assert "--methods lists var twice" in capsys.readouterr().err
    assert main(["collect", "--results", str(tmp_path)]) == 1
    assert "no records under" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_jobs_side_by_side_show_their_lines_and_latest_progress(tmp_path, capsys):
    """jobs.parallel > 1: each job's log lines prefixed with its name, its progress bar's
    latest state only, no traceback lines."""
    from types import SimpleNamespace
    handles = []
    for name in ("tok-a", "tok-b"):
        paths = SimpleNamespace(stdout=tmp_path / f"{name}.out", stderr=tmp_path / f"{name}.err")
        paths.stdout.write_text("")
        paths.stderr.write_text(f"starting {name}\nbar 1%\rbar 50%")
        handles.append((SimpleNamespace(name=name), SimpleNamespace(paths=paths)))
    executors._follow_many(handles, every=0.0)
    out = capsys.readouterr().out.splitlines()
    assert out == ["[tok-a] starting tok-a", "[tok-a] bar 50%", "[tok-b] starting tok-b", "[tok-b] bar 50%"]
    with open(handles[0][1].paths.stderr, "a") as f:
        f.write("\rbar 100%\nTraceback (most recent call last):\n  File x\nValueError: bad\ndone\n")
    executors._follow_many(handles[:1], every=3600.0)
    assert capsys.readouterr().out.splitlines() == ["[tok-a] bar 100%", "[tok-a] done"]


def test_jobs_side_by_side_share_the_cores_on_their_own_config_copy():
    """A seed's train and evaluate jobs share one config: the train job's share of the cores
    must not leave its evaluation (one at a time, every core) on one thread."""
    groups = plan([load_config("tiny")], ["flowar", "var"], None)
    train, evaluate = groups[1].jobs[0], groups[2].jobs[0]
    assert train.cfg is evaluate.cfg
    executors.share_cores(train, 2)
    assert train.cfg.threads == max(1, (os.cpu_count() or 1) // 2) and evaluate.cfg.threads == 0
    pinned = groups[1].jobs[1]
    pinned.cfg = OmegaConf.merge(pinned.cfg, {"threads": 3})
    executors.share_cores(pinned, 2)
    assert pinned.cfg.threads == 3                                      # a user's setting stays
