"""One self-contained HTML report of a results folder: provenance, the headline table, the
plots and side-by-side grids (embedded, so the file can be mailed), the tokenizer and
validation tables, every run, and the papers' published numbers beside whatever this suite
measured on the same setting.

    python -m benchmark report                     # results/report.html from results/
    python -m benchmark report --with-reference    # the shipped reference rows beside yours
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from benchmark.io import write_text
from benchmark.results.readme import provenance_line
from benchmark.results.tables import headline, read_records, records_to_frame, tokenizer_table

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px}h2{margin-top:2em;border-bottom:1px solid #ddd}"""


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption class="note">' \
           f"{html.escape(path.name)}</figcaption></figure>"


def papers_table(paper_csv: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The published numbers, with the suite's own Inception FID where a record measured the same
    method at the same resolution (``evaluate`` records on ImageNet), else "not measured here"."""
    papers = pd.read_csv(paper_csv)
    ours = {}
    fid = "frechet_inception_distance"   # torch-fidelity's key, as `evaluate` records it
    if len(frame) and fid in frame.columns:
        for _, row in frame.dropna(subset=[fid]).iterrows():
            ours[(str(row["method"]).lower(), int(row["resolution"]))] = (round(float(row[fid]), 2),
                                                                          row.get("device") or "")
    found = [ours.get((str(m).lower(), int(r))) for m, r in zip(papers["method"], papers["resolution"])]
    papers["FID here"] = [f[0] if f else "not measured here" for f in found]
    papers["difference"] = [round(f[0] - p, 2) if f and pd.notna(p) else "" for f, p in zip(found, papers["fid"])]
    papers["hardware here"] = [f[1] if f else "" for f in found]
    return papers[[c for c in ("method", "model", "resolution", "cfg", "fid", "is", "FID here", "difference",
                               "hardware here", "evaluator", "source", "notes") if c in papers.columns]]


def build_report(results_dir: str | Path, out: str | Path, paper_csv: str | Path | None = None,
                 reference_dir: str | Path | None = None) -> Path:
    results_dir = Path(results_dir)
    records, skipped = read_records(results_dir / "records")
    mine = records_to_frame(records) if records else pd.DataFrame()
    where = f"{results_dir / 'records'}/"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>scalewise-bench report</title>"
             f"<style>{STYLE}</style></head><body><h1>scalewise-bench report</h1>",
             f"<p class='note'>{html.escape(provenance_line(records, where))}"
             + (f" {len(skipped)} unreadable record(s) skipped." if skipped else "") + "</p>"]
    parts.append("<h2>Headline</h2><p class='note'>Mean ± std over seeds; ★ the configured settings. Quality on "
                 "<code>shapes</code> is read by the factor evaluator (not Inception metrics).</p>")
    parts.append(_table(headline(mine)) if len(mine) else "<p>No records yet: run <code>python -m benchmark run"
                                                          "</code>.</p>")
    if reference_dir:
        ref_records, _ = read_records(Path(reference_dir) / "records")
        if ref_records:
            parts.append(f"<h2>Shipped reference results</h2><p class='note'>{html.escape(provenance_line(ref_records))}"
                         "</p>" + _table(headline(records_to_frame(ref_records))))
    figures = [p for p in [results_dir / "plots" / "quality_vs_speed.png", results_dir / "plots" / "loss_curves.png",
                           *sorted((results_dir / "grids").glob("side_by_side_*.png"))] if p.exists()]
    if figures:
        parts.append("<h2>Figures</h2>" + "".join(_image(p, p.stem.replace("_", " ")) for p in figures))
    if records:
        tok = tokenizer_table(records)
        if len(tok):
            parts.append("<h2>Tokenizers</h2>" + _table(tok.drop(columns=["tokenizer_key"])))
    validation = results_dir / "evaluator_validation.csv"
    if validation.exists():
        parts.append("<h2>The evaluator against broken generators</h2>" + _table(pd.read_csv(validation)))
    if len(mine):
        parts.append("<h2>Every run</h2>" + _table(mine.drop(columns=[c for c in ("run_dir",) if c in mine.columns])))
    if paper_csv and Path(paper_csv).exists():
        parts.append("<h2>Published numbers (ImageNet)</h2><p class='note'>From the papers and official "
                     "repositories, each with its source; <i>FID here</i> is this suite's Inception FID on the same "
                     "setting where a record has one.</p>" + _table(papers_table(Path(paper_csv), mine)))
    # After load, the page says whether every image decoded (the browser test reads it).
    parts.append("<script>addEventListener('load',()=>document.body.dataset.imagesOk=[...document.images]"
                 ".every(i=>i.complete&&i.naturalWidth>0))</script></body></html>")
    write_markdown(Path(out).with_suffix(".md"), results_dir, records, mine, figures, paper_csv)
    return write_text(Path(out), "\n".join(parts))


def write_markdown(path: Path, results_dir: Path, records: list[dict], mine: pd.DataFrame, figures: list[Path],
                   paper_csv) -> Path:
    """The same report as Markdown, figures linked (relative to the results folder)."""
    from benchmark.results.tables import markdown_table
    lines = ["# scalewise-bench report", "", provenance_line(records, f"{results_dir / 'records'}/"), "",
             "## Headline", "", markdown_table(headline(mine)) if len(mine) else "No records yet.", ""]
    lines += [f"![{p.stem}]({p.relative_to(results_dir)})" for p in figures if p.is_relative_to(results_dir)]
    if records:
        tok = tokenizer_table(records)
        if len(tok):
            lines += ["", "## Tokenizers", "", markdown_table(tok.drop(columns=["tokenizer_key"]))]
    if paper_csv and Path(paper_csv).exists():
        lines += ["", "## Published numbers (ImageNet)", "", markdown_table(papers_table(Path(paper_csv), mine))]
    return write_text(path, "\n".join(lines) + "\n")
