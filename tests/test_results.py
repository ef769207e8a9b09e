"""Records -> leaderboard, plots and sample grids (benchmark/results.py)."""
from __future__ import annotations

import json
import math
import warnings

import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark import records, results

pytestmark = pytest.mark.filterwarnings("ignore:skipping record")


def make_record(method: str, seed: int, cc: float, fd: float, created: str = "2025-01-01T00:00:00") -> dict:
    return {
        "method": method, "config_hash": f"{method[:4]}1234", "seed": seed, "preset": "tiny",
        "dataset": "shapes", "resolution": 32,
        "metrics": {"class_consistency": cc, "domain_fd": fd, "throughput_img_s": 40.0, "params_m": 1.2},
        "reference": {"class_acc_real": 0.99, "untrained_domain_fd": 300.0},
        "timings": {"tokenizer_s": 120, "train_s": 500},
        "created": created, "run_dir": f"runs/{method}/{seed}",
    }


@pytest.fixture
def records_root(tmp_path):
    """2 methods x 2 seeds, plus an older duplicate of (var, seed 0) and two bad files."""
    root = tmp_path / "records"
    results.write_record(root / "flowar/s0.json", make_record("flowar", 0, 0.50, 12.0))
    results.write_record(root / "flowar/s1.json", make_record("flowar", 1, 0.60, 14.0))
    results.write_record(root / "var/s0.json", make_record("var", 0, 0.40, 20.0, "2025-02-01T00:00:00"))
    results.write_record(root / "var/s0_old.json", make_record("var", 0, 0.10, 99.0, "2025-01-01T00:00:00"))
    results.write_record(root / "var/s1.json", make_record("var", 1, 0.30, 22.0, "2025-02-01T00:00:00+00:00"))
    (root / "broken.json").write_text('{"method": "var", "metr')
    (root / "partial.json").write_text(json.dumps({"method": "var", "seed": 3}))
    return root


def test_write_record_is_atomic_and_readable(tmp_path):
    path = tmp_path / "a" / "b" / "record.json"
    record = make_record("flowar", 0, 0.5, 12.0)
    assert results.write_record(path, record) == path
    results.write_record(path, {**record, "seed": 1})  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temp files left
    text = path.read_text()
    assert json.loads(text) == {**record, "seed": 1}
    assert text.index('"config_hash"') < text.index('"method"') < text.index('"seed"')  # sorted keys


def test_write_record_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(TypeError):
        results.write_record(tmp_path / "r.json", {"method": "x", "metrics": {"bad": object()}})
    assert list(tmp_path.iterdir()) == []


def test_read_records_reports_bad_files(records_root):
    (records_root / "list.json").write_text("[1, 2]")
    (records_root / "binary.json").write_bytes(b"\xff\xfe\x00")
    good, skipped = results.read_records(records_root)
    assert len(good) == 5
    reasons = {p.name: r for p, r in skipped}
    assert set(reasons) == {"broken.json", "partial.json", "list.json", "binary.json"}
    assert "metrics" in reasons["partial.json"]


def test_records_to_frame_dedupes_and_orders(records_root):
    good, _ = results.read_records(records_root)
    df = results.records_to_frame(good)
    assert list(df.columns[:10]) == ["method", "preset", "dataset", "resolution", "scales", "sampler", "seed",
                                     "config_hash", "class_consistency", "domain_fd"]
    assert {"ref_class_acc_real", "tokenizer_s", "train_s"} <= set(df.columns)
    assert df.columns[-1] == "run_dir"
    assert list(zip(df["method"], df["seed"])) == [("flowar", 0), ("flowar", 1), ("var", 0), ("var", 1)]
    assert df.loc[2, "class_consistency"] == 0.40  # the newer of the two (var, 0) records


def test_rebuild_leaderboard_writes_tables(records_root, tmp_path):
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.rebuild_leaderboard(records_root, out)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.json" in messages and "partial.json" in messages
    assert len(df) == 4

    csv = pd.read_csv(out / "leaderboard.csv")
    pd.testing.assert_frame_equal(csv, df, check_dtype=False)
    assert 99.0 not in csv["domain_fd"].tolist()

    md = (out / "leaderboard.md").read_text()
    assert "| method | preset |" in md and "| flowar | tiny | shapes | 32 |  |  | 1 |" in md
    assert "0.55 ± 0.071" in md  # flowar class_consistency over seeds
    cost_table = md.split("## Sampling cost")[1].split("## Mean")[0]
    assert "| throughput_img_s | params_m |" in cost_table and "| 40 | 1.2 |" in cost_table
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["leaderboard.csv", "leaderboard.md", "leaderboard_summary.csv",
                                                     "tokenizers.csv", "tokenizers.md"]


def test_tokenizer_table_one_row_per_tokenizer_and_resolution(tmp_path):
    def with_tokenizer(method, name, resolution, fd, created):
        record = make_record(method, 0, 0.5, 10.0, created)
        record.update(resolution=resolution, tokenizer={"name": name, "kind": "continuous", "key": f"{name}-abc"},
                      reference={"domain_fd_recon": fd, "factor_hue_w1_recon": 0.01, "factor_size_w1_recon": 0.02,
                                 "factor_position_w1_recon": 0.03, "factor_hue_coverage_recon": 1.0, "recon_psnr": 25.0, "class_acc_recon": 0.9,
                                 "class_acc_real": 0.99},
                      protocol={"num_reference": 1000})
        return record
    records = [with_tokenizer("flowar", "kl", 32, 0.5, "2025-01-01T00:00:00"),
               with_tokenizer("flowar", "kl", 32, 0.2, "2025-02-01T00:00:00"),   # newer: wins
               with_tokenizer("mar", "kl", 32, 0.3, "2025-01-15T00:00:00"),      # the same tokenizer, another user
               with_tokenizer("flowar", "kl", 64, 0.9, "2025-01-01T00:00:00"),
               with_tokenizer("var", "msvq", 32, 0.6, "2025-01-01T00:00:00"),
               make_record("var", 1, 0.3, 22.0)]                                 # no tokenizer figures: skipped
    table = results.tokenizer_table(records)
    assert list(zip(table.tokenizer, table.resolution)) == [("kl", 32), ("msvq", 32), ("kl", 64)]
    assert table.loc[0, "recon_fd"] == 0.2 and table.loc[0, "used_by"] == "flowar, mar"
    assert table.loc[0, "recon_psnr"] == 25.0 and table.loc[0, "num_reference"] == 1000
    for name, record in enumerate(records):
        results.write_record(tmp_path / "records" / f"{name}.json", record)
    results.rebuild_leaderboard(tmp_path / "records", tmp_path)
    assert "| kl | continuous | tiny | shapes | 32 | 0.2 | 0.01 | 0.02 | 0.03 | 1 | 25 |" in (tmp_path / "tokenizers.md").read_text()


def test_summary_mean_and_std(records_root, tmp_path):
    results.rebuild_leaderboard(records_root, tmp_path)
    summary = pd.read_csv(tmp_path / "leaderboard_summary.csv").set_index("method")
    assert summary.loc["flowar", "n_seeds"] == 2 and summary.loc["var", "seeds"] == "0,1"
    assert summary.loc["flowar", "class_consistency_mean"] == pytest.approx(0.55)
    assert summary.loc["flowar", "class_consistency_std"] == pytest.approx(math.sqrt(0.005))  # ddof=1
    assert summary.loc["var", "domain_fd_mean"] == pytest.approx(21.0)
    assert summary.loc["var", "domain_fd_std"] == pytest.approx(math.sqrt(2.0))
    assert summary.loc["var", "throughput_img_s_std"] == 0.0


def test_empty_records_root(tmp_path):
    df = results.rebuild_leaderboard(tmp_path / "none", tmp_path / "out")
    assert df.empty and (tmp_path / "out" / "leaderboard.md").exists()


@pytest.mark.parametrize("size, per_class", [(32, 4), (80, 3)])
def test_sample_grid_size(tmp_path, size, per_class):
    labels = torch.tensor([2, 0, 2, 0, 0, 2, 2, 2, 0, 0, 2])  # classes 0 and 2; class 2 has 6
    images = torch.rand(len(labels), 3, size, size) * 2 - 1
    names = ["circle", "square", "triangle"]
    path = results.save_sample_grid(images, labels, names, tmp_path / "grid.png", per_class=per_class)
    cell = max(size, 64)  # 32 px samples are upscaled to 64
    pad = results.GRID_PADDING
    width = per_class * (cell + pad) + pad + results.label_margin(["circle", "triangle"])
    assert Image.open(path).size == (width, 2 * (cell + pad) + pad)


def test_sample_grid_pads_missing_cells(tmp_path):
    images = -torch.ones(3, 3, 64, 64)  # black samples; blank cells are white
    labels = torch.tensor([0, 1, 1])
    path = results.save_sample_grid(images, labels, ["a", "b"], tmp_path / "g.png", per_class=2)
    img = Image.open(path).convert("RGB")
    margin, pad = results.label_margin(["a", "b"]), results.GRID_PADDING
    first_row_y = pad + 32
    assert img.getpixel((margin + pad + 32, first_row_y)) == (0, 0, 0)                # sample
    assert img.getpixel((margin + 2 * pad + 64 + 32, first_row_y)) == (255, 255, 255)  # blank


def test_plots_created(records_root, tmp_path):
    df = results.rebuild_leaderboard(records_root, tmp_path / "lb")
    paths = results.plot_leaderboard(df, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["class_consistency.png", "domain_fd.png", "extrapolation.png",
                                             "quality_speed_flowar.png", "quality_speed_var.png", "quality_vs_speed.png",
                                             "throughput_img_s.png"]
    assert (tmp_path / "plots" / "quality_vs_speed.svg").exists()
    assert all(p.stat().st_size > 0 for p in paths)

    single = results.plot_leaderboard(df.iloc[:1].drop(columns="throughput_img_s"), tmp_path / "one")
    assert [p.name for p in single] == ["class_consistency.png", "domain_fd.png", "extrapolation.png"]   # no speed plot
    assert Image.open(single[0]).size[0] > 100


def test_sampler_text_is_one_short_cell():
    settings = {"cfg": 4.0, "top_k": 0, "topk_sides": [1, 2, 4], "infer_patch_nums": [], "max_pn": None, "smooth": False}
    assert records.sampler_text(settings) == "cfg=4 top_k=0 topk_sides=1-2-4 smooth=False"


def test_quality_speed_labels_name_what_differs(tmp_path):
    rows = pd.DataFrame({"method": "flowar", "dataset": "shapes", "resolution": 32, "scales": "1-2-4-8",
                         "sampler": ["num_flow_steps=4 cfg=4", "num_flow_steps=8 cfg=4", "num_flow_steps=8 cfg=2"],
                         "throughput_img_s": [80.0, 40.0, 41.0], "domain_fd": [12.0, 9.0, 10.0],
                         "class_consistency": [0.4, 0.5, 0.45]})
    assert results._setting_labels(rows) == ["num_flow_steps=4 cfg=4", "num_flow_steps=8 cfg=4", "num_flow_steps=8 cfg=2"]
    assert results._setting_labels(rows.iloc[1:]) == ["cfg=4", "cfg=2"]
    assert results._setting_labels(rows.iloc[:1]) == ["as configured"]
    (path,) = results.plot_quality_speed(rows, tmp_path)
    assert path.name == "quality_speed_flowar.png" and Image.open(path).size[0] > 300


def test_loss_curve(tmp_path):
    steps = list(range(50))
    losses = [1.0 / (s + 1) for s in steps]
    losses[3] = 0.0  # non-positive values are dropped from the log plot
    path = results.save_loss_curve(steps, losses, tmp_path / "curves" / "loss.png")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError):
        results.save_loss_curve([1, 2], [1.0], tmp_path / "bad.png")


def test_headline_has_at_most_ten_columns_with_mean_and_std_over_seeds(records_root, tmp_path):
    df = results.rebuild_leaderboard(records_root, tmp_path)
    from benchmark.results.tables import headline, mean_std
    table = headline(df)
    assert len(table.columns) <= 10 and list(table.columns[:2]) == ["method", "setting"]
    assert sorted(table.method) == ["flowar ★", "var ★"]
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.index("## Headline") < md.index("## Every run")
    assert mean_std(pd.Series([0.5, 0.52])) == "0.510 ± 0.014"          # digits set by the spread
    assert mean_std(pd.Series([12.3456])) == "12.3" and mean_std(pd.Series([], dtype=float)) == ""


def test_side_by_side_figure_from_the_cells_each_evaluation_kept(tmp_path):
    """The configured rows of every method, under the real images and the reconstructions."""
    import json as _json

    import numpy as np
    from benchmark.results import grids
    labels = torch.arange(3).repeat_interleave(4)
    cells = lambda v: grids.grid_cells(torch.full((12, 3, 8, 8), v), labels)
    records = []
    for i, method in enumerate(["flowar", "var"]):
        record = make_record(method, 0, 0.5, 10.0)
        record.update(config_hash=f"h{i}", configured=True, tokenizer={"name": ["kl", "msvq"][i]})
        np.savez(tmp_path / f"tiny_{method}_h{i}_seed0.npz", **cells(0.5 * i), real=cells(1.0)["cells"],
                 recon=cells(-1.0)["cells"], class_names=_json.dumps(["a", "b", "c"]))
        records.append(record)
    records.append({**records[0], "configured": False, "config_hash": "swept"})   # a sweep row: left out
    (path,) = grids.save_side_by_side(records, tmp_path)
    assert path.name == "side_by_side_tiny_32px_seed0.png"
    image = np.asarray(Image.open(path))
    assert image.shape[0] > 4 * 64 and image.shape[1] > 6 * 64     # 5 rows (real, kl, msvq, 2 methods) of 6 cells


def test_readme_blocks_are_rewritten_from_records_only(records_root, tmp_path):
    from benchmark.results.readme import update_readme
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated:headline -->\nstale\n<!-- /generated:headline -->\n"
                      "<!-- generated:validation -->\nkept\n<!-- /generated:validation -->\noutro\n")
    assert update_readme(readme, records_root.parent) == ["headline"]   # no validation table there: left alone
    text = readme.read_text()
    assert "stale" not in text and "| flowar ★ |" in text and "kept" in text and text.endswith("outro\n")


def test_headline_and_plots_with_a_not_supported_row_and_missing_metrics(records_root, tmp_path):
    """Mixed settings: a sweep row, a 'not supported by design' row (no metrics) and a record
    without factor_hue_w1; the headline leaves the unsupported row out, the plots name it."""
    from benchmark.results.tables import headline
    sweep = make_record("flowar", 0, 0.45, 13.0)
    sweep.update(config_hash="flow-cfg1", configured=False, sampler="cfg=1")
    note = make_record("var", 0, 0.0, 0.0)
    note.update(config_hash="var-64", resolution=64, metrics={}, note="not supported by design: fixed scales")
    for name, record in (("sweep", sweep), ("note", note)):
        results.write_record(records_root / f"{name}.json", record)
    df = results.rebuild_leaderboard(records_root, tmp_path)
    table = headline(df)
    assert "flowar" in set(table.method) and len(table) == 3 and table.iloc[0].method == "flowar ★"
    assert (table["hue W1 ↓"] == "").all()            # no record has it: an empty cell, not an error
    paths = results.plot_leaderboard(df, tmp_path / "plots")
    assert "extrapolation.png" in [p.name for p in paths]
