"""The HTML report (benchmark/results/report.py), opened in a real browser (headless
Chromium, installed by .ci/run; elsewhere the browser test skips and says why)."""
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark import results
from benchmark.cli import main
from benchmark.results.report import build_report, papers_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def fake_results(root):
    for method, cc in (("flowar", 0.5), ("var", 0.45)):
        for seed in (0, 1):
            results.write_record(root / "records" / f"tiny_{method}_h_seed{seed}.json", {
                "method": method, "config_hash": f"{method}-h", "seed": seed, "preset": "tiny", "dataset": "shapes",
                "resolution": 32, "scales": "1-2-4-8", "sampler": "cfg=2", "configured": True,
                "metrics": {"class_consistency": cc + 0.01 * seed, "factor_hue_w1": 0.02, "domain_fd": 3.0,
                            "domain_recall": 0.8, "throughput_img_s": 40.0 + seed, "nfe": 12},
                "compute": {"images_seen": 76800}, "created": "2026-12-01T00:00:00",
                "provenance": {"commit": "a" * 40, "dirty": False, "machine": {"cpu": "test cpu", "cores": 2}}})
    frame = results.rebuild_leaderboard(root / "records", root)
    results.plot_leaderboard(frame, root / "plots")
    return root


def test_report_holds_the_tables_figures_and_published_numbers(tmp_path):
    root = fake_results(tmp_path)
    out = build_report(root, root / "report.html", "results/paper_results.csv")
    text = out.read_text()
    for needle in ("Headline", "flowar ★", "0.505 ± 0.007", "data:image/png;base64,", "Published numbers",
                   "FlowAR-H", "not measured here", "commit aaaaaaaaaa"):
        assert needle in text, needle
    assert "Shipped reference results" not in text   # only when asked
    md = (root / "report.md").read_text()
    assert "| flowar ★ |" in md and "](plots/quality_vs_speed.png)" in md and "## Published numbers" in md


def test_papers_table_shows_this_suites_fid_where_a_record_has_one():
    frame = pd.DataFrame([{"method": "VAR", "resolution": 256, "frechet_inception_distance": 3.71, "device": "H200"}])
    table = papers_table(__import__("pathlib").Path("results/paper_results.csv"), frame)
    var = table[(table.method == "VAR") & (table.resolution == 256)]
    assert (var["FID here"] == 3.71).all() and (table[table.method == "FlowAR"]["FID here"] == "not measured here").all()
    assert (var["hardware here"] == "H200").all()
    assert [round(d, 2) for d in var["difference"]] == [round(3.71 - f, 2) for f in var["fid"]]


def test_report_cli_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)")
def test_report_renders_in_a_real_browser(tmp_path):
    root = fake_results(tmp_path)
    out = build_report(root, root / "report.html", "results/paper_results.csv")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    run = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                          out.as_uri()], capture_output=True, text=True, timeout=120)
    dom = run.stdout
    assert "<table" in dom and "flowar ★" in dom and dom.count("<img") >= 1
    assert 'data-images-ok="true"' in dom                                # every image decoded
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console                                          # no console errors or warnings
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri()], capture_output=True,
                   timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10                                             # drawn, not a blank page
    assert (pixels < 128).any(1).mean() > 0.2                           # content down the page: tables and figures
