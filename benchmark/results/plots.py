"""Leaderboard plots (seaborn on bare matplotlib Figures, saved through the Agg canvas)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from benchmark.io import atomic_write
from benchmark.results.tables import MAIN_METRICS, METRIC_DIRECTION


def _save_figure(fig: Figure, path: str | Path, svg: bool = False) -> Path:
    """PNG (and, with ``svg``, an SVG beside it)."""
    if svg:
        atomic_write(Path(path).with_suffix(".svg"), lambda tmp: fig.savefig(tmp, format="svg", bbox_inches="tight"))
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def _bar_labels(df: pd.DataFrame) -> pd.Series:
    """Method names, with the setting in words added where a method has several configs."""
    from benchmark.results.tables import setting_in_words
    n_configs = df.groupby("method", dropna=False)["config_hash"].transform("nunique")
    words = df.apply(lambda r: setting_in_words(r).replace(", ", "\n"), axis=1) if len(df) else df["method"]
    return df["method"].astype(str).where(n_configs <= 1, df["method"].astype(str) + "\n" + words)


def plot_leaderboard(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One bar plot per main metric (bars: method; error bars: std over seeds), and a
    quality-speed plot per method (``plot_quality_speed``)."""
    data = df.assign(label=_bar_labels(df),
                     setting=df["dataset"].astype(str) + " " + df["resolution"].astype(str) + "px")
    hue = "setting" if data["setting"].nunique() > 1 else None
    paths = []
    for metric in MAIN_METRICS:
        if metric not in data or data[metric].notna().sum() == 0:
            continue
        order = sorted(data.loc[data[metric].notna(), "label"].unique())   # rows without the metric: no empty bar
        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=(max(4.0, 1.7 * len(order) + 1.5), 3.8))
            ax = fig.subplots()
            sns.barplot(data=data, x="label", y=metric, hue=hue, order=order, errorbar="sd",
                        capsize=0.15, ax=ax)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3g", fontsize=8, label_type="center", color="white")
        if hue:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), frameon=False)
        ax.set(xlabel="", title=f"{metric} ({METRIC_DIRECTION[metric]})")
        ax.tick_params(axis="x", labelsize=7)
        paths.append(_save_figure(fig, Path(out_dir) / f"{metric}.png"))
    return (paths + plot_quality_speed(df, out_dir) + plot_quality_cost(df, out_dir) + plot_loss_curves(df, out_dir)
            + plot_extrapolation(df, out_dir) + plot_quality_compute(df, out_dir))


SCALE_TOKENS = ("infer_patch_nums=", "topk_sides=", "max_pn=")   # sampler settings that follow the scale list


def _sampler_core(sampler) -> str:
    return " ".join(t for t in str(sampler or "").split() if not t.startswith(SCALE_TOKENS))


def _errorbar_lines(ax, data: pd.DataFrame, x: str, y: str, palette: dict) -> None:
    for method, rows in data.groupby("method"):
        stats = rows.dropna(subset=[x, y]).groupby(x)[y].agg(["mean", "std"]).reset_index().sort_values(x)
        if stats.empty:
            continue
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), fmt="-o", ms=5, capsize=3,
                    color=palette[method], label=method)


def plot_extrapolation(df: pd.DataFrame, out_dir: str | Path, metric: str = "class_consistency") -> list[Path]:
    """Every method on one figure: quality against the sampling resolution (each method's
    configured sampler) and against the number of AR steps (scale lists swept at the training
    resolution, other settings as configured); rows that are not supported by design are listed
    under the panel they belong to."""
    if metric not in df.columns or "resolution" not in df.columns:
        return []
    configured = df[df["configured"].fillna(True).astype(bool)] if "configured" in df.columns else df
    ok = configured[configured[metric].notna()]
    train_res = ok.groupby("method")["resolution"].min()
    steps = []
    for method, rows in df[df[metric].notna()].groupby("method"):
        base = ok[(ok.method == method) & (ok.resolution == train_res.get(method))]
        if len(base):
            core = _sampler_core(base.iloc[0]["sampler"])
            same = rows[(rows.resolution == train_res[method]) & (rows["sampler"].map(_sampler_core) == core)]
            steps.append(same.dropna(subset=["scales"]).assign(
                ar_steps=lambda d: d["scales"].astype(str).str.count("-") + 1))
    steps = pd.concat(steps) if steps else pd.DataFrame()
    notes = df[df["note"].notna()] if "note" in df.columns else df.iloc[:0]
    if ok.empty:
        return []
    palette = dict(zip(sorted(df.method.unique()), sns.color_palette("colorblind")))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(11, 4.2))
        axes = fig.subplots(1, 2)
    _errorbar_lines(axes[0], ok, "resolution", metric, palette)
    axes[0].set(xlabel="sampling resolution (px)", ylabel=metric, title=f"{metric} against resolution",
                xticks=sorted(ok["resolution"].unique()))
    if len(steps) and "ar_steps" in steps.columns:
        _errorbar_lines(axes[1], steps, "ar_steps", metric, palette)
        axes[1].set_xticks(sorted(steps["ar_steps"].unique()))
    axes[1].set(xlabel="AR steps (scales)", ylabel=metric, title=f"{metric} against step count")
    other_res = notes["resolution"] != notes["method"].map(train_res)   # else: another scale list
    for ax, rows in zip(axes, (notes[other_res], notes[~other_res])):
        names = sorted({f"{r.method} at {r.resolution} px" if ax is axes[0] else f"{r.method} (other scale lists)"
                        for r in rows.itertuples()})
        if names:
            ax.text(0.02, 0.02, "not supported by design: " + ", ".join(names), transform=ax.transAxes, fontsize=8,
                    color="dimgrey")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=8)
    return [_save_figure(fig, Path(out_dir) / "extrapolation.png", svg=True)]


def plot_quality_compute(df: pd.DataFrame, out_dir: str | Path,
                         metrics: Sequence[str] = ("class_consistency", "factor_hue_w1")) -> list[Path]:
    """Quality of the configured rows against training compute (images seen = steps x batch),
    every method on one figure, error bars over seeds."""
    metrics = [m for m in metrics if m in df.columns]
    if "train_images" not in df.columns or not metrics:
        return []
    rows = df[df["configured"].fillna(True).astype(bool)] if "configured" in df.columns else df
    rows = rows.dropna(subset=["train_images", *metrics])
    if rows.empty:
        return []
    palette = dict(zip(sorted(df.method.unique()), sns.color_palette("colorblind")))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5 * len(metrics), 4))
        axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        _errorbar_lines(ax, rows, "train_images", metric, palette)
        ax.set(xlabel="training images seen (steps x batch)", ylabel=metric,
               title=f"{metric} ({METRIC_DIRECTION.get(metric, '')}) against training compute")
        ax.legend(frameon=False, fontsize=8)
    return [_save_figure(fig, Path(out_dir) / "quality_vs_training_compute.png", svg=True)]


def pareto_front(x: np.ndarray, y: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Indices of the points no other point beats in both speed (x, higher) and quality (y),
    in order of x."""
    order = np.argsort(-x)
    front, best = [], -np.inf
    for i in order:
        q = y[i] if higher_is_better else -y[i]
        if q > best:
            front.append(i)
            best = q
    return np.array(front[::-1], dtype=int)


def plot_quality_cost(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Every method on one figure: quality (class consistency, hue W1, domain FD) against images/s,
    one point per method x setting (error bars: std over seeds), the Pareto front dashed, the
    configured settings as filled markers."""
    metrics = [m for m in ("class_consistency", "factor_hue_w1", "domain_fd") if m in df.columns]
    if "throughput_img_s" not in df.columns or not metrics:
        return []
    rows = df.dropna(subset=["throughput_img_s", *metrics])
    if rows.empty:
        return []
    stats = rows.groupby(["method", "config_hash"], sort=False).agg(
        **{f"{c}_{f}": (c, f) for c in ["throughput_img_s", *metrics] for f in ("mean", "std")},
        configured=("configured", "first") if "configured" in rows.columns else ("method", lambda s: True)).reset_index()
    palette = dict(zip(sorted(stats.method.unique()), sns.color_palette("colorblind")))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5 * len(metrics), 4))
        axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        higher = METRIC_DIRECTION.get(metric, "").startswith("higher")
        x, y = stats["throughput_img_s_mean"].to_numpy(), stats[f"{metric}_mean"].to_numpy()
        for method, group in stats.groupby("method"):
            for filled in (True, False):
                g = group[group.configured.astype(bool) == filled]
                if len(g):
                    ax.errorbar(g["throughput_img_s_mean"], g[f"{metric}_mean"], yerr=g[f"{metric}_std"].fillna(0),
                                xerr=g["throughput_img_s_std"].fillna(0), fmt="o", ms=6, capsize=3,
                                color=palette[method], mfc=palette[method] if filled else "white",
                                label=method if filled else f"{method} (sweep)")
        front = pareto_front(x, y, higher)
        ax.plot(x[front], y[front], "--", color="grey", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 20, 50, 100: no 3x10^1 clutter
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="images/s at the evaluation batch (log)", ylabel=metric,
               title=f"{metric} ({METRIC_DIRECTION.get(metric, '')})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False, bbox_to_anchor=(0.5, 1.08))
    return [_save_figure(fig, Path(out_dir) / "quality_vs_speed.png", svg=True)]


def plot_loss_curves(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Training loss of every run (read from its run directory's train.json), one panel per
    method (losses of different methods are not comparable), one line per seed."""
    import json
    curves = []
    for run_dir in df.get("run_dir", pd.Series(dtype=object)).dropna().unique():
        info = Path(run_dir) / "train.json"
        if info.exists():
            history = json.loads(info.read_text()).get("history") or []
            name = Path(run_dir)
            curves += [{"method": name.parent.name.split("-")[0], "run": f"{name.parent.name}/{name.name}",
                        "step": step, "loss": loss} for step, loss in history if loss and loss > 0]
    if not curves:
        return []
    data = pd.DataFrame(curves)
    methods = sorted(data.method.unique())
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(4.5 * len(methods), 3.5))
        axes = np.atleast_1d(fig.subplots(1, len(methods)))
    for ax, method in zip(axes, methods):
        sns.lineplot(data=data[data.method == method], x="step", y="loss", hue="run", lw=1, ax=ax)
        ax.set(yscale="log", title=f"{method}: training loss", xlabel="step", ylabel="loss (log)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.legend(fontsize=7, frameon=False)
    return [_save_figure(fig, Path(out_dir) / "loss_curves.png", svg=True)]


def _setting_labels(rows: pd.DataFrame) -> list[str]:
    """What tells a method's rows apart: the sampler settings and scales not shared by all."""
    tokens = [f"{sampler} scales={scales}".split() if isinstance(sampler, str) else [f"scales={scales}"]
              for sampler, scales in zip(rows["sampler"], rows["scales"])]
    tokens = [[t for t in row if not t.startswith("infer_patch_nums=")] for row in tokens]   # = the scales
    common = set.intersection(*map(set, tokens))
    return [" ".join(t for t in row if t not in common) or "as configured" for row in tokens]


def plot_quality_speed(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Per method, quality against sampling speed over all its rows (sampler sweeps, step
    counts, resolutions): domain FD and class consistency against images/s, each point
    labelled with what differs between the rows."""
    needed = ["throughput_img_s", "domain_fd", "class_consistency"]
    if not set(needed) <= set(df.columns):
        return []
    paths = []
    for method, rows in df.dropna(subset=needed).groupby("method"):
        rows = rows.assign(setting=rows["dataset"].astype(str) + " " + rows["resolution"].astype(str) + "px",
                           label=_setting_labels(rows))
        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=(13, 4.5))
            axes = fig.subplots(1, 2)
        for ax, metric in zip(axes, ["domain_fd", "class_consistency"]):
            hue = "setting" if rows["setting"].nunique() > 1 else None
            sns.scatterplot(data=rows, x="throughput_img_s", y=metric, hue=hue, s=40, ax=ax)
            # labels alternate above and below in order of y, so that neighbours do not overprint
            order = np.argsort(rows[metric].to_numpy()).argsort()
            for x, y, text, k in zip(rows["throughput_img_s"], rows[metric], rows["label"], order):
                ax.annotate(text, (x, y), fontsize=7, xytext=(4, 4 if k % 2 else -10), textcoords="offset points")
            ax.set(xscale="log", xlabel="images/s (evaluation batch, log)",
                   title=f"{method}: {metric} ({METRIC_DIRECTION[metric]})")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.margins(x=0.3, y=0.12)   # room for the labels
        fig.subplots_adjust(wspace=0.3)
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

