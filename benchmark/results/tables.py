"""Records -> the leaderboard frame, its summary over seeds, the tokenizer table, and the
CSV / Markdown files (``rebuild_leaderboard``)."""
from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from benchmark.io import locked, atomic_write, write_text

ID_COLUMNS = ["method", "preset", "dataset", "resolution", "scales", "sampler", "seed", "config_hash"]
SORT_COLUMNS = ["dataset", "resolution", "method", "seed"]
MAIN_METRICS = ["class_consistency", "factor_hue_w1", "factor_size_w1", "factor_position_w1", "factor_hue_coverage",
                "hue_spread_w1", "domain_fd", "domain_kid", "domain_precision", "domain_recall", "throughput_img_s"]
METRIC_DIRECTION = {"class_consistency": "higher is better", "domain_fd": "lower is better",
                    "domain_is": "higher is better", "domain_kid": "lower is better",
                    "domain_precision": "higher is better", "domain_recall": "higher is better",
                    "factor_hue_w1": "lower is better", "factor_size_w1": "lower is better", "factor_position_w1": "lower is better",
                    "factor_hue_coverage": "higher is better", "hue_spread_w1": "lower is better",
                    "throughput_img_s": "higher is better"}
# The sampling-cost columns (benchmark/speed.py), shown as their own table in leaderboard.md.
COST_COLUMNS = ["throughput_img_s", "throughput_bs1_img_s", "latency_ms_per_image", "latency_bs1_ms", "nfe",
                "gflops_per_image", "gflops_decode_per_image", "params_m", "peak_memory_mb", "device", "dtype"]
REQUIRED_KEYS = ("method", "metrics")


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
    row["configured"] = record.get("configured", True)
    row["train_images"] = (record.get("compute") or {}).get("images_seen")
    row["commit"] = ((record.get("provenance") or {}).get("commit") or "")[:10] or None
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
    optional = [c for c in ("device", "dtype", "note", "configured", "train_images", "commit")
                if any(row.get(c) is not None for row in rows)]
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


# The headline: what a reader compares first (label, column, digits are set by the spread).
HEADLINE = [("class consistency ↑", "class_consistency"), ("hue W1 ↓", "factor_hue_w1"),
            ("hue spread W1 ↓", "hue_spread_w1"), ("domain FD ↓", "domain_fd"), ("recall ↑", "domain_recall"),
            ("img/s", "throughput_img_s"), ("GFLOPs/img", "gflops_per_image"), ("train images", "train_images")]


def mean_std(values: pd.Series) -> str:
    """``mean ± std`` over seeds with the std to one significant digit (two when it starts with
    a 1) and the mean to the same decimal place; one value, or equal values, as the value alone
    (3 significant digits; whole numbers with thousands separators); empty without a value."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return ""
    m = float(v.mean())
    sd = float(v.std()) if len(v) > 1 else 0.0
    if sd == 0:
        return f"{m:,.0f}" if m == round(m) and abs(m) >= 1000 else f"{m:.3g}"
    exponent = int(math.floor(math.log10(sd)))
    digits = max(0, -exponent + (1 if f"{sd:e}".startswith("1") else 0))
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def setting_in_words(row: pd.Series) -> str:
    """``cfg 1.5, 4 flow steps, scales 1-2-4-8, 32 px``: the settings a reader compares first (the
    full sampler settings are in the CSV's ``sampler`` column)."""
    words = {"cfg": "cfg {}", "num_flow_steps": "{} flow steps", "top_k": "top-k {}", "top_p": "top-p {}"}
    tokens = [t.split("=", 1) for t in str(row.get("sampler") or "").split() if "=" in t]
    sampler = ", ".join(words[k].format(v) for k, v in tokens if k in words and v not in ("0", "0.0"))
    parts = [p for p in (sampler, f"scales {row['scales']}" if isinstance(row.get("scales"), str) else "",
                         f"{int(row['resolution'])} px" if pd.notna(row.get("resolution")) else "") if p]
    return ", ".join(parts)


# On an image folder (Inception metrics, torch-fidelity's keys) instead of the domain metrics.
HEADLINE_INCEPTION = [("FID ↓", "frechet_inception_distance"), ("IS ↑", "inception_score_mean"),
                      ("precision ↑", "precision"), ("recall ↑", "recall"), ("img/s", "throughput_img_s"),
                      ("NFE", "nfe"), ("GFLOPs/img", "gflops_per_image"), ("train images", "train_images")]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """At most 10 columns, one row per method x setting (seeds pooled as mean ± std), the
    configured default marked ★, rows that cannot be sampled left out (the full table has them).
    Domain metrics on `shapes`; Inception metrics when no row has them."""
    domain = "class_consistency" in df.columns and df["class_consistency"].notna().any()
    columns = HEADLINE if domain or "frechet_inception_distance" not in df.columns else HEADLINE_INCEPTION
    rows = []
    ok = df[df["note"].isna()] if "note" in df.columns else df
    for (method, _), group in ok.groupby(["method", "config_hash"], sort=False):
        first = group.iloc[0]
        default = "configured" not in group.columns or bool(first.get("configured", True))
        row = {"method": method + (" ★" if default else ""), "setting": setting_in_words(first)}
        for label, col in columns:
            row[label] = mean_std(group[col]) if col in group.columns else ""
        row["seeds"] = len(group)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["method", "setting", *(label for label, _ in columns), "seeds"])
    order = table["method"].str.rstrip(" ★") + table["method"].str.endswith("★").map({True: " 0", False: " 1"})
    table = table.iloc[order.argsort(kind="stable")].reset_index(drop=True)   # per method, the configured row first
    return table.drop(columns=["seeds"] if len(table.columns) > 10 else [])


def _mean_std_table(summary: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The summary with each value shown as ``mean ± std`` strings."""
    table = summary[["method", "config_hash", "dataset", "resolution", "n_seeds"]].copy()
    for col in _value_columns(df):
        means, stds = summary[f"{col}_mean"], summary[f"{col}_std"]
        table[col] = [_format_cell(m) if pd.isna(s) or pd.isna(m) else f"{m:.4g} ± {s:.2g}"
                      for m, s in zip(means, stds)]
    return table


TOKENIZER_COLUMNS = ["tokenizer", "kind", "preset", "dataset", "resolution", "recon_fd", "recon_factor_hue_w1", "recon_factor_size_w1",
                     "recon_factor_position_w1", "recon_factor_hue_coverage", "recon_psnr",
                     "recon_class_accuracy", "real_class_accuracy", "num_reference", "codebook_usage_pct",
                     "dead_codes", "used_by", "tokenizer_key"]


def tokenizer_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per tokenizer x preset x resolution, from the reference figures the evaluation
    records (the newest record wins): reconstructions of the held-out reference images scored
    like samples — ``recon_fd``, the domain rFID (evaluator FD of reconstructions vs the real
    images), ``recon_factor_*`` (their factor distributions against the real ones), PSNR and the
    evaluator's class accuracy on them. Kept apart from the generation table:
    rFID and gFID are different protocols."""
    rows = {}
    for record in sorted(records, key=_created):
        tok, ref = record.get("tokenizer") or {}, record.get("reference") or {}
        if "domain_fd_recon" not in ref or "name" not in tok:
            continue
        key = (tok.get("key", tok["name"]), record.get("preset"), record.get("dataset"), record.get("resolution"))
        used_by = sorted({record["method"], *(rows[key]["used_by"].split(", ") if key in rows else [])})
        rows[key] = {"tokenizer": tok["name"], "kind": tok.get("kind"), "preset": record.get("preset"),
                     "dataset": record.get("dataset"), "resolution": record.get("resolution"),
                     "recon_fd": ref["domain_fd_recon"], **{f"recon_{m}": ref.get(f"{m}_recon") for m in
                        ("factor_hue_w1", "factor_size_w1", "factor_position_w1", "factor_hue_coverage")}, "recon_psnr": ref.get("recon_psnr"),
                     "recon_class_accuracy": ref.get("class_acc_recon"),
                     "real_class_accuracy": ref.get("class_acc_real"),
                     "num_reference": (record.get("protocol") or {}).get("num_reference"),
                     "codebook_usage_pct": tok.get("codebook_usage_pct"), "dead_codes": tok.get("dead_codes"),
                     "used_by": ", ".join(used_by), "tokenizer_key": tok.get("key")}
    df = pd.DataFrame(list(rows.values()), columns=TOKENIZER_COLUMNS)
    return df.sort_values(["dataset", "resolution", "tokenizer"], kind="stable").reset_index(drop=True)


def rebuild_leaderboard(records_root: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Rebuild leaderboard.csv / .md, leaderboard_summary.csv and the tokenizer table
    (tokenizers.csv / .md) from the records on disk. Under a lock on ``out_dir``: of two
    sweeps sharing a results folder, the later rebuild reads every record both wrote."""
    with locked(out_dir):
        return _rebuild(records_root, out_dir)


def _rebuild(records_root: str | Path, out_dir: str | Path) -> pd.DataFrame:
    records, skipped = read_records(records_root)
    for path, reason in skipped:
        warnings.warn(f"skipping record {path}: {reason}", stacklevel=2)
    df = records_to_frame(records)
    summary = summarize(df)
    out_dir = Path(out_dir)
    atomic_write(out_dir / "leaderboard.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(out_dir / "leaderboard_summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    cost = [c for c in COST_COLUMNS if c in df.columns]
    markdown = ("# Leaderboard\n\n## Headline\n\nMean ± std over seeds; ★ the configured settings (other "
                "rows are sampler sweeps of the same weights). Quality on `shapes` is read by the factor "
                "evaluator: class consistency, the Wasserstein-1 distance of the hue distribution to the real one "
                "(turns) and of the hue spread within each shape (mottled, many-coloured shapes), the Fréchet "
                "distance and recall in its feature space (not Inception metrics). img/s at the evaluation batch "
                "(network evaluations per image in the sampling-cost table); train images = steps x batch.\n\n"
                + markdown_table(headline(df))
                + "\n## Every run\n\nOne row per run (method x config x seed); all columns in `leaderboard.csv`.\n\n"
                + markdown_table(df.drop(columns=["run_dir", *cost]))
                + "\n## Sampling cost\n\nImages/s and latency at the evaluation batch and at batch 1 (median of "
                  "repeats after a warm-up; tokens + decoding), network evaluations per image, GFLOPs per image "
                  "(torch's FLOP counter), parameters (millions), peak memory (MB).\n\n"
                + markdown_table(df[ID_COLUMNS + cost])
                + "\n## Mean ± std over seeds\n\n"
                + markdown_table(_mean_std_table(summary, df)))
    write_text(out_dir / "leaderboard.md", markdown)
    tokenizers = tokenizer_table(records)
    atomic_write(out_dir / "tokenizers.csv", lambda tmp: tokenizers.to_csv(tmp, index=False))
    write_text(out_dir / "tokenizers.md", "# Tokenizers\n\nReconstructions of the held-out reference images, "
                       "scored like samples: `recon_fd` is the domain rFID (Fréchet distance in the shapes "
                       "factor evaluator's feature space, torch-fidelity), `recon_factor_hue_w1`, `_size_w1` and "
                       "`_position_w1` the Wasserstein-1 distances of their factors to the real ones (as in the "
                       "leaderboard), `recon_factor_hue_coverage` the share of the real hue range they reach, `recon_psnr` in dB, and the evaluator's class accuracy "
                       "on the reconstructions and on the real images. A separate protocol from generation (the "
                       "leaderboard); codebook usage is measured on 512 held-out images at the training resolution."
                       "\n\n" + markdown_table(tokenizers))
    return df

