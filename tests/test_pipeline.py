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
    assert main(["run", "--methods", "flowar", "var", "--preset", "smoke", *paths]) == 0
    return root, paths, time.time() - start


def test_run_writes_record_leaderboard_grid_and_config(smoke_run):
    root, _, seconds = smoke_run
    records = [json.loads(p.read_text()) for p in (root / "results" / "records").glob("*.json")]
    assert sorted(r["method"] for r in records) == ["flowar", "var"]
    for record in records:
        assert record["preset"] == "smoke"
        for key in ("class_consistency", "domain_fd", "domain_kid", "domain_precision", "domain_recall",
                    "domain_is", "factor_hue_w1", "factor_size_w1", "factor_position_w1", "factor_class_tv", "factor_hue_coverage", "factor_size_coverage",
                    "factor_position_coverage", "throughput_img_s", "params_m"):
            assert key in record["metrics"]
        assert 0 <= record["metrics"]["factor_hue_w1"] <= 0.5 and 0 <= record["metrics"]["factor_hue_coverage"] <= 1
        prov = record["provenance"]
        assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
        assert prov["command"].startswith("python -m benchmark run --methods flowar var")
        assert prov["packages"]["torch"] and prov["machine"]["cores"] >= 1
        assert record["compute"]["images_seen"] == record["compute"]["train_steps"] * record["compute"]["batch_size"]
        assert 1 <= record["metrics"]["domain_is"] <= 4 and record["protocol"]["evaluator"].startswith("torch-fidelity")
        for key in ("throughput_bs1_img_s", "latency_bs1_ms", "nfe", "gflops_per_image", "peak_memory_mb"):
            assert record["metrics"][key] > 0, key
        assert record["protocol"]["cost"]["dtype"] == "fp32" and record["protocol"]["cost"]["device"] == "cpu"
        for key in ("class_acc_real", "class_acc_recon", "untrained_class_consistency"):
            assert key in record["reference"]
    var = next(r for r in records if r["method"] == "var")
    assert var["tokenizer"]["kind"] == "multiscale_residual" and 0 < var["tokenizer"]["codebook_usage_pct"] <= 100
    assert set(var["protocol"]["sampler"]) == {"cfg", "top_k", "top_p", "more_smooth"}
    board = pd.read_csv(root / "results" / "leaderboard.csv")
    assert sorted(board.method.tolist()) == ["flowar", "var"]
    tokenizers = pd.read_csv(root / "results" / "tokenizers.csv")
    assert sorted(tokenizers.tokenizer) == ["kl", "msvq"] and (tokenizers.recon_psnr > 5).all()
    assert (tokenizers.recon_fd >= 0).all() and sorted(tokenizers.used_by) == ["flowar", "var"]
    for method in ("flowar", "var"):
        assert next((root / "results" / "grids").glob(f"smoke_{method}_*_seed0.png")).stat().st_size > 0
        run_dir = next((root / "runs" / "smoke").glob(f"{method}-*/seed0"))
        assert (run_dir / "config.yaml").exists() and (run_dir / "ema.safetensors").exists()
    assert seconds < 180


def test_rerun_reuses_finished_stages(smoke_run):
    root, paths, _ = smoke_run
    cached = [*(root / "cache").rglob("*.safetensors"), *(root / "runs").rglob("*.safetensors")]
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    assert main(["run", "--methods", "flowar", "var", "--preset", "smoke", *paths]) == 0
    # Tokenizer, latents and training are reused, not redone.
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    assert len(list((root / "results" / "records").glob("*.json"))) == 2


def test_sampler_settings_share_the_trained_model(smoke_run):
    """Another cfg is another leaderboard row, evaluated on the same trained weights."""
    root, paths, _ = smoke_run
    assert main(["run", "--methods", "flowar", "--preset", "smoke", "flowar.cfg=3.0", *paths]) == 0
    assert len(list((root / "runs" / "smoke").glob("flowar-*"))) == 1
    board = pd.read_csv(root / "results" / "leaderboard.csv")
    flowar = board[board.method == "flowar"]
    assert len(flowar) == 2 and flowar.config_hash.nunique() == 2


def test_sample_command_writes_pngs_and_npz_and_resumes(smoke_run, tmp_path):
    import numpy as np

    root, paths, _ = smoke_run
    ckpt = next((root / "runs" / "smoke").glob("flowar-*/seed0/ema.safetensors"))
    out = tmp_path / "samples"
    args = ["sample", "--method", "flowar", "--preset", "smoke", "--checkpoint", str(ckpt), "--out", str(out),
            "eval.samples_per_class=2", *paths]
    assert main(args) == 0
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 8  # 4 classes x 2
    first = np.load(out / "samples.npz")["arr_0"]
    assert first.shape == (8, 16, 16, 3) and first.dtype == np.uint8
    pngs[3].unlink()  # a job killed part-way: only the missing image is redone, identically
    stamp = pngs[0].stat().st_mtime_ns
    assert main(args) == 0
    assert pngs[0].stat().st_mtime_ns == stamp
    assert np.array_equal(np.load(out / "samples.npz")["arr_0"], first)


def test_sample_killed_half_way_then_rerun_makes_only_the_missing_images_identically(smoke_run, tmp_path):
    """SIGKILL to a real `sample` process part-way: the rerun draws only the images not yet
    written, and the folder ends identical to an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    root, paths, _ = smoke_run
    ckpt = next((root / "runs" / "smoke").glob("var-*/seed0/ema.safetensors"))
    repo = Path(__file__).resolve().parent.parent

    def args(out):
        return ["sample", "--method", "var", "--preset", "smoke", "--checkpoint", str(ckpt), "--out", str(out),
                "eval.samples_per_class=400", "eval.batch_size=4", *paths]
    assert main(args(tmp_path / "straight")) == 0
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", *args(tmp_path / "killed")], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo), "SCALEWISE_PROGRESS": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    images = tmp_path / "killed" / "images"
    deadline = time.time() + 120
    while len(list(images.glob("*.png"))) < 40 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    written = {p.name for p in images.glob("??????.png")}
    assert 40 <= len(written) < 1600 and not (tmp_path / "killed" / "samples.npz").exists()
    stamps = {name: (images / name).stat().st_mtime_ns for name in written}
    assert main(args(tmp_path / "killed")) == 0
    assert all((images / name).stat().st_mtime_ns == t for name, t in stamps.items())   # none redrawn
    assert sorted(p.name for p in images.glob("*.png")) == [f"{i:06d}.png" for i in range(1600)]
    assert np.array_equal(np.load(tmp_path / "killed" / "samples.npz")["arr_0"],
                          np.load(tmp_path / "straight" / "samples.npz")["arr_0"])


def test_sample_command_works_for_var(smoke_run, tmp_path):
    import numpy as np

    root, paths, _ = smoke_run
    ckpt = next((root / "runs" / "smoke").glob("var-*/seed0/ema.safetensors"))
    out = tmp_path / "var_samples"
    assert main(["sample", "--method", "var", "--preset", "smoke", "--checkpoint", str(ckpt), "--out", str(out),
                 "eval.samples_per_class=1", *paths]) == 0
    assert np.load(out / "samples.npz")["arr_0"].shape == (4, 16, 16, 3)


def test_sample_rejects_a_checkpoint_of_another_size(smoke_run, tmp_path, capsys):
    root, paths, _ = smoke_run
    ckpt = next((root / "runs" / "smoke").glob("flowar-*/seed0/ema.safetensors"))
    assert main(["sample", "--preset", "smoke", "--checkpoint", str(ckpt), "--out", str(tmp_path),
                 "flowar.encoder_depth=2", *paths]) == 1
    assert "ema.safetensors does not fit" in capsys.readouterr().err



def test_sweep_writes_one_row_per_value_and_scores_against_one_reference(smoke_run, monkeypatch):
    """eval.sweep: each value its own record (its own hash), the other settings as configured;
    the evaluator, reference features and floor are computed once for all rows."""
    from benchmark import evaluation as stages
    from benchmark.config import load_config
    from benchmark.keys import evaluation_key

    _, paths, _ = smoke_run
    real_build, built = stages.build_reference, []
    monkeypatch.setattr(stages, "build_reference", lambda *a, **k: built.append(a[1]) or real_build(*a, **k))
    cfg = load_config("smoke", [*paths, "eval.sweep.cfg=[1.0,3.0]", "eval.sweep.num_flow_steps=[2]",
                                "eval.sweep.patch_nums=[[1,2,4]]"])
    flowar = [json.loads(p.read_text()) for p in stages.evaluate_method(cfg, "flowar")]
    # as configured (cfg 1.5, 4 flow steps), cfg 1 and 3, 2 flow steps, and another scale list (refused by design)
    assert len({r["config_hash"] for r in flowar}) == len(flowar) == 5
    assert flowar[0]["config_hash"] == evaluation_key(load_config("smoke", paths), "flowar")
    settings = [r["protocol"]["sampler"] for r in flowar[:4]]
    assert [(s["cfg"], s["num_flow_steps"]) for s in settings] == [(1.5, 4), (1.0, 4), (3.0, 4), (1.5, 2)]
    assert [r["metrics"]["nfe"] for r in flowar[:4]] == [3 * 4 * 2, 3 * 4, 3 * 4 * 2, 3 * 2 * 2]
    assert flowar[3]["sampler"].startswith("num_flow_steps=2 cfg=1.5 guidance_low=")
    assert flowar[4]["note"].startswith("not supported by design") and flowar[4]["metrics"] == {}
    assert flowar[1]["reference"] == flowar[0]["reference"] and built == ["flowar"]
    var = [json.loads(p.read_text()) for p in stages.evaluate_method(cfg, "var")]
    notes = [r.get("note") or "" for r in var]
    assert len(var) == 5 and sum(n.startswith("not supported by design") for n in notes) == 2
    assert any("no sampler setting 'num_flow_steps'" in n for n in notes) and built == ["flowar", "var"]


def test_evaluate_a_run_directory_and_a_checkpoint(smoke_run, tmp_path, capsys):
    """`evaluate --run DIR`: on shapes, the run stage's own domain evaluation (the same record);
    with --reference, its samples scored by torch-fidelity; `--checkpoint` likewise."""
    import numpy as np
    from benchmark.metrics import fidelity
    from benchmark.config import load_config
    from benchmark.build import build_dataset
    from benchmark.generation import to_uint8
    from benchmark.keys import RunKeys
    from test_fidelity import random_inception_file

    root, paths, _ = smoke_run
    run = next((root / "runs" / "smoke").glob("var-*/seed0"))
    record = RunKeys.of(load_config("smoke", paths), "var").record
    before = json.loads(record.read_text())["metrics"]["class_consistency"]
    assert main(["evaluate", "--run", str(run)]) == 0
    assert f"record: {record}" in capsys.readouterr().out
    assert json.loads(record.read_text())["metrics"]["class_consistency"] == before   # same samples, same score

    weights = random_inception_file(tmp_path / "inception")
    real, _ = build_dataset(load_config("smoke", paths), "reference").render(np.arange(16))
    fidelity.write_reference(tmp_path / "ref.npz", to_uint8(real))
    common = ["--reference", str(tmp_path / "ref.npz"), "--inception-weights", str(weights), "--metrics", "fid",
              "--results", str(tmp_path / "results"), "--batch-size", "16"]
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "run_samples"), *common]) == 0
    assert main(["evaluate", "--checkpoint", str(run / "ema.safetensors"), "--method", "var", "--preset", "smoke",
                 "--out", str(tmp_path / "ckpt_samples"), *common, *paths]) == 0
    a, b = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in ("run_samples", "ckpt_samples"))
    assert a.shape == (16, 16, 16, 3) and np.array_equal(a, b)   # one config and checkpoint, one set of images
    fids = [json.loads(p.read_text())["metrics"]["frechet_inception_distance"]
            for p in (tmp_path / "results" / "records").glob("fidelity_*.json")]
    assert len(fids) == 2 and fids[0] == pytest.approx(fids[1]) and fids[0] > 0
    assert main(["evaluate", "--checkpoint", str(run / "ema.safetensors"), *common]) == 2
    assert "--checkpoint needs --method" in capsys.readouterr().err
    # The dataset itself as the reference: the same held-out images, rendered and cached by the suite.
    assert main(["evaluate", "--samples", str(tmp_path / "run_samples"), "--reference", "dataset", "--preset", "smoke",
                 *common[2:], "eval.reference_size=16", *paths]) == 0
    cached = root / "cache" / "references" / "shapes-easy-16px-16.npz"
    assert np.array_equal(np.load(cached)["arr_0"], np.load(tmp_path / "ref.npz")["arr_0"])


def test_finished_evaluations_are_skipped_but_checked_in_records_are_not_enough(smoke_run):
    """A rerun skips an evaluation done here; a fresh clone has results/records from git but no
    run-directory copy, so its own evaluation runs."""
    from benchmark.config import load_config
    from benchmark.keys import RunKeys

    root, paths, _ = smoke_run
    keys = RunKeys.of(load_config("smoke", paths), "var")
    record, local = keys.record, keys.local_record
    args = ["run", "--methods", "var", "--preset", "smoke", "--executor", "inline", *paths]
    stamp = record.stat().st_mtime_ns
    assert main(args) == 0 and record.stat().st_mtime_ns == stamp   # done here: skipped
    local.unlink()   # what a fresh clone looks like
    assert main(args) == 0 and local.exists() and record.stat().st_mtime_ns != stamp
