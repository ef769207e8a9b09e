"""Leaderboard plots (seaborn on bare matplotlib Figures, saved through the Agg canvas)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from benchmark.io import atomic_write
from benchmark.results.tables import MAIN_METRICS, METRIC_DIRECTION


def _save_figure(fig: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


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

