"""`run` on an image folder goes all the way to Inception metrics (torch-fidelity's FID, IS,
KID, precision/recall) offline with a given Inception weights file, and refuses missing inputs
before any work."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_fidelity import random_inception_file

from benchmark.cli import main

INCEPTION_KEYS = ("frechet_inception_distance", "inception_score_mean", "kernel_inception_distance_mean",
                  "precision", "recall")


def make_folder(root, classes=4, per_class=(24, 8)):
    """train/ and val/ with one sub-folder per class: a coloured square on noise, per class."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
                img[4:14, 4:14, c % 3] = 200
                Image.fromarray(img).save(root / split / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imagefolder")
    weights = random_inception_file(tmp / "inception")
    args = ["run", "--methods", "flowar", "var", "--preset", "smoke", "--executor", "inline",
            "data.name=imagefolder", f"data.root={make_folder(tmp / 'data')}", "data.num_classes=4",
            f"eval.inception_weights={weights}", "eval.samples_per_class=4", "eval.reference_size=16",
            f"paths.runs={tmp / 'runs'}", f"paths.cache={tmp / 'cache'}", f"paths.results={tmp / 'results'}"]
    assert main(args) == 0
    return tmp, args


def test_run_reports_inception_rows_for_an_image_folder(folder_run):
    tmp, _ = folder_run
    records = [json.loads(p.read_text()) for p in (tmp / "results" / "records").glob("*.json")]
    assert sorted(r["method"] for r in records) == ["flowar", "var"]
    for r in records:
        assert r["dataset"] == "imagefolder" and r["resolution"] == 16
        for key in INCEPTION_KEYS:
            assert np.isfinite(r["metrics"][key]), key
        assert r["metrics"]["frechet_inception_distance"] > 0 and r["metrics"]["throughput_img_s"] > 0
        assert r["reference"]["fid_recon"] >= 0 and r["protocol"]["num_reference"] == 16
        assert r["protocol"]["num_samples"] == 16 and "torch-fidelity" in r["protocol"]["evaluator"]
    board = (tmp / "results" / "leaderboard.md").read_text()
    assert "FID ↓" in board and "frechet_inception_distance" in (tmp / "results" / "leaderboard.csv").read_text()


def test_sweeps_score_the_same_way(folder_run):
    tmp, args = folder_run
    assert main([*args[:3], *args[4:], "--stages", "evaluate", "eval.sweep.cfg=[1,3]"]) == 0   # flowar only
    records = [json.loads(p.read_text()) for p in (tmp / "results" / "records").glob("*flowar*.json")]
    assert len(records) >= 3 and all("frechet_inception_distance" in r["metrics"] for r in records)


def test_missing_inception_weights_or_reference_fail_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))           # no cached weights here
    monkeypatch.delenv("SCALEWISE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    data = make_folder(tmp_path / "data", per_class=(2, 1))
    common = ["run", "--methods", "var", "--preset", "smoke", "--executor", "inline", "data.name=imagefolder",
              f"data.root={data}", "data.num_classes=4", "train.batch_size=4", f"paths.runs={tmp_path / 'runs'}",
              f"paths.cache={tmp_path / 'cache'}", f"paths.results={tmp_path / 'results'}"]
    assert main(common) != 0
    assert "Inception weights" in capsys.readouterr().err
    assert main([*common, "eval.reference=/nowhere/VIRTUAL_imagenet256_labeled.npz"]) != 0
    assert "eval.reference='/nowhere/VIRTUAL_imagenet256_labeled.npz' is not a file" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()   # nothing started
