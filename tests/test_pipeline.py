"""The whole slice through the CLI on the smoke preset: tokenizer, training, evaluation,
records and the leaderboard; then a rerun that reuses every cached stage."""
import json
import time

import pandas as pd
import pytest

from benchmark.cli import main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    paths = [f"paths.runs={root}/runs", f"paths.cache={root}/cache", f"paths.results={root}/results"]
    start = time.time()
    assert main(["run", "--methods", "flowar", "--preset", "smoke", *paths]) == 0
    return root, paths, time.time() - start


def test_run_writes_record_leaderboard_grid_and_config(smoke_run):
    root, _, seconds = smoke_run
    records = list((root / "results" / "records").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["method"] == "flowar" and record["preset"] == "smoke"
    for key in ("class_consistency", "classifier_fd", "throughput_img_s", "params_m"):
        assert key in record["metrics"]
    for key in ("classifier_acc_real", "classifier_acc_recon", "untrained_class_consistency"):
        assert key in record["reference"]
    board = pd.read_csv(root / "results" / "leaderboard.csv")
    assert board.method.tolist() == ["flowar"]
    assert next((root / "results" / "grids").glob("smoke_flowar_*_seed0.png")).stat().st_size > 0
    run_dir = next((root / "runs" / "smoke").glob("flowar-*/seed0"))
    assert (run_dir / "config.yaml").exists() and (run_dir / "ema.safetensors").exists()
    assert seconds < 120


def test_rerun_reuses_finished_stages(smoke_run):
    root, paths, first = smoke_run
    start = time.time()
    assert main(["run", "--methods", "flowar", "--preset", "smoke", *paths]) == 0
    # Tokenizer and training are skipped; only sampling and scoring run again.
    assert time.time() - start < max(first * 0.6, 5)
    assert len(list((root / "results" / "records").glob("*.json"))) == 1
