"""`python -m benchmark bench`: the table, the CSV/JSON with provenance, the scaling series and
its plot, bad inputs before any timing; and, where an official checkout is at hand
(SCALEWISE_OFFICIAL=<folder of checkouts>), the side-by-side comparison with the official code."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import bench, official_bench

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = os.environ.get("SCALEWISE_OFFICIAL")


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd, capture_output=True, text=True)


def test_bench_writes_table_csv_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    proc = cli("bench", "--methods", "var", "flowar", "--repeats", "1", "--batch-size", "2", "--train-batch", "2",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "bench.json").read_text())
    assert doc["provenance"]["machine"]["cores"] and doc["provenance"]["packages"]["torch"]
    assert doc["settings"]["statistic"].startswith("median")
    suite = [r for r in doc["rows"] if r["implementation"] == "suite" and not r["what"].startswith("series")]
    assert {(r["method"], r["what"]) for r in suite} == {(m, w) for m in ("var", "flowar")
                                                          for w in ("sample_bs1", "sample_large", "train_step")}
    assert all(r["value"] > 0 for r in doc["rows"])
    series = [r for r in doc["rows"] if r["what"] == "series: latent side"]
    assert sorted(r["side"] for r in series if r["method"] == "var") == [8, 16, 32]
    assert {r["tokens"] for r in series if r["method"] == "flowar"} == {85, 341, 1365}   # 1+4+16+64 ...
    assert [r["num_scales"] for r in doc["rows"] if r["what"] == "series: scales"] == [4, 5, 7, 8, 10]
    assert (out / "scaling.png").stat().st_size > 10_000 and (out / "bench.csv").read_text().count("\n") == len(doc["rows"]) + 1
    assert "| var | tiny (tiny, 32 px) | sample bs1 | 1 |" in (out / "bench.md").read_text()


def test_series_token_counts_follow_the_scale_lists():
    for method in ("var", "flexvar", "flowar"):
        for _, side, scales, overrides in bench.series_configs(method):
            assert scales[-1] == side and f"data.resolution={4 * side}" in overrides


@pytest.mark.parametrize("args, message", [
    (["--methods", "dit"], "--methods dit: bench knows flowar, var, flexvar"),
    (["--shapes", "huge"], "--shapes huge: choose from tiny, paper"),
    (["--batch-size", "0"], "--batch-size=0 must be at least 1"),
    (["--official", "/nonexistent/official"], "no checkout of wangqiang9/FlowAR there"),
])
def test_bad_input_is_refused_before_any_timing(tmp_path, args, message):
    proc = cli("bench", *args, "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


def test_find_checkout_accepts_the_folder_or_its_parent(tmp_path):
    repo = tmp_path / "VAR"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "var.py").write_text("")
    assert official_bench.find_checkout("var", tmp_path) == repo
    assert official_bench.find_checkout("var", repo) == repo
    with pytest.raises(official_bench.OfficialCodeError, match="git clone https://github.com/jiaosiyu1999/FlexVAR"):
        official_bench.find_checkout("flexvar", tmp_path)


@pytest.mark.skipif(not OFFICIAL, reason="set SCALEWISE_OFFICIAL to a folder of official checkouts (VAR, FlexVAR, "
                    "FlowAR; FlowAR needs timm and einops importable) to compare with the official code")
@pytest.mark.parametrize("method", ["var", "flexvar", "flowar"])
def test_official_side_by_side_gives_the_same_images(method):
    rows = bench.official_rows(method, OFFICIAL, "tiny", "cpu", batch_size=2, train_batch=2, repeats=1)
    assert [r["what"] for r in rows] == ["sample_bs1", "sample_large", "train_step"]
    assert all(r["ratio"] == r["value"] == r["suite"] / r["official"] for r in rows)
    assert all(r["official"] > 0 and r["suite"] > 0 for r in rows)
    assert rows[0]["parity_max_abs"] < 1e-4
    assert rows[0].get("tokens_equal", True)
