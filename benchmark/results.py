"""Per-run evaluation records -> leaderboard tables, plots and sample grids.

Each evaluated run writes one JSON record (``write_record``). The checked-in leaderboard is
always rebuilt from the records found on disk (``rebuild_leaderboard``), so a record that is
corrupt or half-written is reported and skipped instead of breaking the table.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects and saved through the Agg
canvas, so nothing needs a display and pyplot's global state (current figure, backend) is
left alone.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

ID_COLUMNS = ["method", "preset", "dataset", "resolution", "scales", "sampler", "seed", "config_hash"]
SORT_COLUMNS = ["dataset", "resolution", "method", "seed"]
MAIN_METRICS = ["class_consistency", "classifier_fd", "classifier_is", "classifier_kid", "classifier_precision",
                "classifier_recall", "throughput_img_s"]
METRIC_DIRECTION = {"class_consistency": "higher is better", "classifier_fd": "lower is better",
                    "classifier_is": "higher is better", "classifier_kid": "lower is better",
                    "classifier_precision": "higher is better", "classifier_recall": "higher is better",
                    "throughput_img_s": "higher is better"}
# The sampling-cost columns (benchmark/speed.py), shown as their own table in leaderboard.md.
COST_COLUMNS = ["throughput_img_s", "throughput_bs1_img_s", "latency_ms_per_image", "latency_bs1_ms", "nfe",
                "gflops_per_image", "gflops_decode_per_image", "params_m", "peak_memory_mb", "device", "dtype"]
REQUIRED_KEYS = ("method", "metrics")

GRID_PADDING = 2        # pixels between grid cells
MIN_CELL_PX = 64        # tiny samples are upscaled (nearest) to at least this size
LABEL_FONT_PX = 14
LABEL_MAX_CHARS = 24


# ----------------------------------------------------------------------------- atomic files

def _atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are shared files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return _atomic_write(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------- records

def sampler_text(settings: dict) -> str:
    """Sampler settings as one short cell: ``cfg=4 num_flow_steps=12`` (lists as 1-2-4; unset,
    None or [], left out)."""
    cell = lambda v: "-".join(map(str, v)) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, float) else str(v)
    return " ".join(f"{k}={cell(v)}" for k, v in settings.items() if v is not None and v != [])


def write_record(path: str | Path, record: dict) -> Path:
    """Write one evaluation record as pretty, key-sorted JSON, atomically."""
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n"
    return _atomic_write_text(path, text)


def _check_record(record: Any) -> str | None:
    """Why ``record`` is unusable, or None if it is fine."""
    if not isinstance(record, dict):
        return f"top level is {type(record).__name__}, not an object"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"partial record: missing {', '.join(missing)}"
    if not isinstance(record["metrics"], dict):
        return "'metrics' is not an object"
    return None


def read_records(root: str | Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Read every ``*.json`` under ``root``; return (good records, [(path, reason), ...])."""
    records, skipped = [], []
    for path in sorted(Path(root).rglob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        reason = _check_record(record)
        if reason:
            skipped.append((path, reason))
        else:
            records.append(record)
    return records, skipped


# ----------------------------------------------------------------------------- tables

def _created(record: dict) -> datetime:
    """The record's creation time (timezone-aware); unparsable or missing sorts oldest."""
    try:
        t = datetime.fromisoformat(str(record.get("created")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _newest_per_run(records: Iterable[dict]) -> list[dict]:
    """Keep one record per (method, config_hash, seed): the newest by ``created``."""
    newest: dict[tuple, dict] = {}
    for record in records:
        key = (record.get("method"), record.get("config_hash"), record.get("seed"))
        if key not in newest or _created(record) >= _created(newest[key]):
            newest[key] = record
    return list(newest.values())


def _flatten(d: dict, prefix: str = "", suffix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a_b": 1, "c": 2}``, with prefix/suffix added."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}_", suffix))
        else:
            name = f"{prefix}{key}"
            out[name if name.endswith(suffix) else name + suffix] = value
    return out


def _row(record: dict) -> tuple[dict, list[str], list[str], list[str]]:
    """One frame row, plus its metric, reference and timing column names."""
    row = {k: record.get(k) for k in ID_COLUMNS}
    metrics = _flatten(record["metrics"])
    metrics = {(f"metrics_{k}" if k in ID_COLUMNS + ["run_dir"] else k): v for k, v in metrics.items()}
    reference = _flatten(record.get("reference") or {}, prefix="ref_")
    timings = _flatten(record.get("timings") or {}, suffix="_s")
    row.update(metrics)
    row.update(reference)
    row.update(timings)
    cost = (record.get("protocol") or {}).get("cost") or {}   # where the cost columns were measured
    row["device"], row["dtype"] = cost.get("device_name"), cost.get("dtype")
    row["note"] = record.get("note")
    row["run_dir"] = record.get("run_dir")
    return row, list(metrics), list(reference), list(timings)


def _ordered_union(lists: Iterable[list[str]], first: Sequence[str] = ()) -> list[str]:
    seen, first = dict.fromkeys(name for names in lists for name in names), dict.fromkeys(first)
    return [n for n in first if n in seen] + [n for n in seen if n not in first]


def records_to_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per method x config_hash x seed (newest record wins), sorted for display.

    Columns: ids, metrics (main ones first), ``ref_*`` reference values, timings (``*_s``),
    run_dir.
    """
    rows, metric_cols, ref_cols, time_cols = [], [], [], []
    for record in _newest_per_run(records):
        row, m, r, t = _row(record)
        rows.append(row)
        metric_cols.append(m)
        ref_cols.append(r)
        time_cols.append(t)
    optional = [c for c in ("device", "dtype", "note") if any(row.get(c) for row in rows)]
    columns = (ID_COLUMNS + _ordered_union(metric_cols, MAIN_METRICS + COST_COLUMNS) + _ordered_union(ref_cols)
               + _ordered_union(time_cols) + optional + ["run_dir"])
    df = pd.DataFrame(rows, columns=columns)
    for col in ("scales", "sampler"):   # missing as a CSV reads it back
        df[col] = df[col].astype(object).where(df[col].notna(), float("nan"))
    return df.sort_values(SORT_COLUMNS, na_position="last", kind="stable").reset_index(drop=True)


def _value_columns(df: pd.DataFrame) -> list[str]:
    """Numeric result columns (everything numeric except the id columns)."""
    return [c for c in df.columns
            if c not in ID_COLUMNS and c != "run_dir" and pd.api.types.is_numeric_dtype(df[c])]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) over seeds per method x config_hash."""
    keys = ["method", "config_hash", "preset", "dataset", "resolution"]
    values = _value_columns(df)
    groups = df.groupby(keys, dropna=False, sort=False)
    summary = groups.agg(n_seeds=("seed", "size"),
                         seeds=("seed", lambda s: ",".join(str(x) for x in sorted(s.dropna()))))
    if values:
        stats = groups[values].agg(["mean", "std"])
        stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
        summary = summary.join(stats)
    summary = summary.reset_index()
    order = ["dataset", "resolution", "method", "config_hash"]
    return summary.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)


def _format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (numbers right-aligned); no ``tabulate`` needed."""
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else ":---"
                           for c in df.columns) + "|"
    rows = ["| " + " | ".join(_format_cell(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, align, *rows]) + "\n"


def _mean_std_table(summary: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The summary with each value shown as ``mean ± std`` strings."""
    table = summary[["method", "config_hash", "dataset", "resolution", "n_seeds"]].copy()
    for col in _value_columns(df):
        means, stds = summary[f"{col}_mean"], summary[f"{col}_std"]
        table[col] = [_format_cell(m) if pd.isna(s) or pd.isna(m) else f"{m:.4g} ± {s:.2g}"
                      for m, s in zip(means, stds)]
    return table


TOKENIZER_COLUMNS = ["tokenizer", "kind", "preset", "dataset", "resolution", "recon_fd", "recon_psnr",
                     "recon_class_accuracy", "real_class_accuracy", "num_reference", "codebook_usage_pct",
                     "dead_codes", "used_by", "tokenizer_key"]


def tokenizer_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per tokenizer x preset x resolution, from the reference figures the evaluation
    records (the newest record wins): reconstructions of the held-out reference images scored
    like samples — ``recon_fd``, the domain rFID (classifier FD of reconstructions vs the real
    images), PSNR and the classifier's accuracy on them. Kept apart from the generation table:
    rFID and gFID are different protocols."""
    rows = {}
    for record in sorted(records, key=_created):
        tok, ref = record.get("tokenizer") or {}, record.get("reference") or {}
        if "classifier_fd_recon" not in ref or "name" not in tok:
            continue
        key = (tok.get("key", tok["name"]), record.get("preset"), record.get("dataset"), record.get("resolution"))
        used_by = sorted({record["method"], *(rows[key]["used_by"].split(", ") if key in rows else [])})
        rows[key] = {"tokenizer": tok["name"], "kind": tok.get("kind"), "preset": record.get("preset"),
                     "dataset": record.get("dataset"), "resolution": record.get("resolution"),
                     "recon_fd": ref["classifier_fd_recon"], "recon_psnr": ref.get("recon_psnr"),
                     "recon_class_accuracy": ref.get("classifier_acc_recon"),
                     "real_class_accuracy": ref.get("classifier_acc_real"),
                     "num_reference": (record.get("protocol") or {}).get("num_reference"),
                     "codebook_usage_pct": tok.get("codebook_usage_pct"), "dead_codes": tok.get("dead_codes"),
                     "used_by": ", ".join(used_by), "tokenizer_key": tok.get("key")}
    df = pd.DataFrame(list(rows.values()), columns=TOKENIZER_COLUMNS)
    return df.sort_values(["dataset", "resolution", "tokenizer"], kind="stable").reset_index(drop=True)


def rebuild_leaderboard(records_root: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Rebuild leaderboard.csv / .md, leaderboard_summary.csv and the tokenizer table
    (tokenizers.csv / .md) from the records on disk."""
    records, skipped = read_records(records_root)
    for path, reason in skipped:
        warnings.warn(f"skipping record {path}: {reason}", stacklevel=2)
    df = records_to_frame(records)
    summary = summarize(df)
    out_dir = Path(out_dir)
    _atomic_write(out_dir / "leaderboard.csv", lambda tmp: df.to_csv(tmp, index=False))
    _atomic_write(out_dir / "leaderboard_summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    cost = [c for c in COST_COLUMNS if c in df.columns]
    markdown = ("# Leaderboard\n\nOne row per run (method x config x seed).\n\n"
                + markdown_table(df.drop(columns=["run_dir", *cost]))
                + "\n## Sampling cost\n\nImages/s and latency at the evaluation batch and at batch 1 (median of "
                  "repeats after a warm-up; tokens + decoding), network evaluations per image, GFLOPs per image "
                  "(torch's FLOP counter), parameters (millions), peak memory (MB).\n\n"
                + markdown_table(df[ID_COLUMNS + cost])
                + "\n## Mean ± std over seeds\n\n"
                + markdown_table(_mean_std_table(summary, df)))
    _atomic_write_text(out_dir / "leaderboard.md", markdown)
    tokenizers = tokenizer_table(records)
    _atomic_write(out_dir / "tokenizers.csv", lambda tmp: tokenizers.to_csv(tmp, index=False))
    _atomic_write_text(out_dir / "tokenizers.md", "# Tokenizers\n\nReconstructions of the held-out reference images, "
                       "scored like samples: `recon_fd` is the domain rFID (Fréchet distance in the shapes "
                       "classifier's feature space, torch-fidelity), `recon_psnr` in dB, and the classifier's accuracy "
                       "on the reconstructions and on the real images. A separate protocol from generation (the "
                       "leaderboard); codebook usage is measured on 512 held-out images at the training resolution."
                       "\n\n" + markdown_table(tokenizers))
    return df


# ----------------------------------------------------------------------------- plots

def _save_figure(fig: Figure, path: str | Path) -> Path:
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def _bar_labels(df: pd.DataFrame) -> pd.Series:
    """Method names, with the config hash added where a method has several configs."""
    n_configs = df.groupby("method", dropna=False)["config_hash"].transform("nunique")
    return df["method"].astype(str).where(n_configs <= 1,
                                          df["method"].astype(str) + "\n" + df["config_hash"].astype(str))


def plot_leaderboard(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One bar plot per main metric (bars: method; error bars: std over seeds), and a
    quality-speed plot per method (``plot_quality_speed``)."""
    data = df.assign(label=_bar_labels(df),
                     setting=df["dataset"].astype(str) + " " + df["resolution"].astype(str) + "px")
    hue = "setting" if data["setting"].nunique() > 1 else None
    order = sorted(data["label"].unique())
    paths = []
    for metric in MAIN_METRICS:
        if metric not in data or data[metric].notna().sum() == 0:
            continue
        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=(max(4.0, 1.2 * len(order) + 1.5), 3.5))
            ax = fig.subplots()
            sns.barplot(data=data, x="label", y=metric, hue=hue, order=order, errorbar="sd",
                        capsize=0.15, ax=ax)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3g", fontsize=8, label_type="center", color="white")
        if hue:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), frameon=False)
        ax.set(xlabel="", title=f"{metric} ({METRIC_DIRECTION[metric]})")
        paths.append(_save_figure(fig, Path(out_dir) / f"{metric}.png"))
    return paths + plot_quality_speed(df, out_dir)


def _setting_labels(rows: pd.DataFrame) -> list[str]:
    """What tells a method's rows apart: the sampler settings and scales not shared by all."""
    tokens = [f"{sampler} scales={scales}".split() if isinstance(sampler, str) else [f"scales={scales}"]
              for sampler, scales in zip(rows["sampler"], rows["scales"])]
    tokens = [[t for t in row if not t.startswith("infer_patch_nums=")] for row in tokens]   # = the scales
    common = set.intersection(*map(set, tokens))
    return [" ".join(t for t in row if t not in common) or "as configured" for row in tokens]


def plot_quality_speed(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Per method, quality against sampling speed over all its rows (sampler sweeps, step
    counts, resolutions): classifier FD and class consistency against images/s, each point
    labelled with what differs between the rows."""
    needed = ["throughput_img_s", "classifier_fd", "class_consistency"]
    if not set(needed) <= set(df.columns):
        return []
    paths = []
    for method, rows in df.dropna(subset=needed).groupby("method"):
        rows = rows.assign(setting=rows["dataset"].astype(str) + " " + rows["resolution"].astype(str) + "px",
                           label=_setting_labels(rows))
        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=(11, 4))
            axes = fig.subplots(1, 2)
        for ax, metric in zip(axes, ["classifier_fd", "class_consistency"]):
            hue = "setting" if rows["setting"].nunique() > 1 else None
            sns.scatterplot(data=rows, x="throughput_img_s", y=metric, hue=hue, s=40, ax=ax)
            for x, y, text in zip(rows["throughput_img_s"], rows[metric], rows["label"]):
                ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set(xscale="log", xlabel="images/s (evaluation batch)", title=f"{method}: {metric} ({METRIC_DIRECTION[metric]})")
            ax.margins(x=0.3, y=0.1)   # room for the labels
        paths.append(_save_figure(fig, Path(out_dir) / f"quality_speed_{method}.png"))
    return paths


def save_loss_curve(steps: Sequence[float], losses: Sequence[float], path: str | Path) -> Path:
    """Training loss against step, log-scale y (non-positive losses are dropped)."""
    x = np.array([float(s) for s in steps])
    y = np.array([float(v) for v in losses])
    if x.shape != y.shape:
        raise ValueError(f"steps ({x.size}) and losses ({y.size}) differ in length")
    keep = np.isfinite(y) & (y > 0)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
    ax.plot(x[keep], y[keep], lw=1)
    if keep.any():
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------- sample grids

def _label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=LABEL_FONT_PX)
    except (TypeError, ImportError):  # old Pillow or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _class_name(class_names: Sequence[str], label: int) -> str:
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    return name[:LABEL_MAX_CHARS]


def label_margin(names: Sequence[str]) -> int:
    """Width in pixels of the left margin that holds the row labels."""
    font = _label_font()
    return int(math.ceil(max((font.getlength(n) for n in names), default=0))) + 2 * 6


def _rows_by_class(images: torch.Tensor, labels: torch.Tensor, per_class: int) -> tuple[torch.Tensor, list[int]]:
    """Cells in row-major order (blank = white) and the class of each row, in label order."""
    classes = sorted(int(c) for c in labels.unique())
    blank = torch.ones_like(images[0])
    cells = []
    for c in classes:
        chosen = list(images[labels == c][:per_class])
        cells += chosen + [blank] * (per_class - len(chosen))
    return torch.stack(cells), classes


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                     path: str | Path, per_class: int = 8) -> Path:
    """Save samples as a PNG grid: one row per class (label order), class names on the left.

    ``images`` are (B, 3, H, W) in [-1, 1]; rows with fewer than ``per_class`` samples are
    padded with blank cells, and cells smaller than 64 px are upscaled (nearest neighbour).
    """
    if images.ndim != 4 or images.shape[0] != labels.numel():
        raise ValueError(f"need images (B,3,H,W) and B labels, got {tuple(images.shape)} and {labels.numel()}")
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    labels = labels.detach().cpu().reshape(-1)
    scale = math.ceil(MIN_CELL_PX / min(images.shape[-2:]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    cells, classes = _rows_by_class(images, labels, per_class)
    grid = make_grid(cells, nrow=per_class, padding=GRID_PADDING, pad_value=1.0)
    grid_img = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())

    names = [_class_name(class_names, c) for c in classes]
    margin = label_margin(names)
    canvas = Image.new("RGB", (grid_img.width + margin, grid_img.height), "white")
    canvas.paste(grid_img, (margin, 0))
    draw, font = ImageDraw.Draw(canvas), _label_font()
    row_h = images.shape[-2] + GRID_PADDING
    text_top, text_bottom = font.getbbox("Ag")[1::2]
    for i, name in enumerate(names):
        centre = GRID_PADDING + i * row_h + (row_h - GRID_PADDING) // 2
        draw.text((6, centre - (text_top + text_bottom) // 2), name, fill="black", font=font)
    return _atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
