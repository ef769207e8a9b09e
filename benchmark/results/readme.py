"""README figures from records: the blocks between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->`` are rewritten from a results folder (the shipped reference,
``results/reference``), never typed by hand.

    python -m benchmark collect --results results/reference --readme README.md
"""
from __future__ import annotations

import re
from pathlib import Path



from benchmark.io import write_text
from benchmark.results.tables import headline, markdown_table, read_records, records_to_frame, tokenizer_table


def provenance_line(records: list[dict], where: str = "results/reference/records/") -> str:
    """Which commit(s), machine and dates produced ``records`` (found in ``where``)."""
    prov = [r.get("provenance") or {} for r in records]
    commits = sorted({(p.get("commit") or "?")[:10] + (" (dirty)" if p.get("dirty") else "") for p in prov})
    machines = sorted({f"{(p.get('machine') or {}).get('cpu')}, {(p.get('machine') or {}).get('cores')} cores"
                       for p in prov})
    dates = sorted(str(r.get("created", ""))[:10] for r in records)
    return (f"From {len(records)} record(s) in `{where}`: commit {', '.join(commits)}; "
            f"{'; '.join(machines)}; {dates[0]} to {dates[-1]}." if records else "No records.")


def blocks(results_dir: Path) -> dict[str, str]:
    records, _ = read_records(results_dir / "records")
    df = records_to_frame(records)
    out = {"provenance": provenance_line(records)}
    if len(df):
        table = headline(df)
        main = table[table.method.str.endswith("★") & table.setting.str.endswith(
            tuple(f"{int(r)} px" for r in df.groupby("method")["resolution"].min().unique()))]
        out["headline"] = markdown_table(main)       # each method's configured row at its training resolution
        out["sweeps"] = markdown_table(table)        # every setting evaluated
        tok = tokenizer_table(records)[["tokenizer", "resolution", "recon_fd", "recon_factor_hue_w1",
                                        "recon_factor_size_w1", "recon_factor_position_w1", "recon_psnr",
                                        "recon_class_accuracy", "codebook_usage_pct", "used_by"]]
        out["tokenizers"] = markdown_table(tok)
        cols = [c for c in ("method", "seed", "sampler", "class_consistency", "factor_hue_w1", "factor_hue_coverage", "factor_size_w1",
                            "factor_position_w1", "domain_fd", "domain_recall", "ref_untrained_class_consistency",
                            "ref_untrained_factor_hue_w1") if c in df.columns]
        out["runs"] = markdown_table(df[df["note"].isna()][cols] if "note" in df else df[cols])
        firsts = df[df["configured"].fillna(True).astype(bool)] if "configured" in df.columns else df
        firsts = firsts[firsts["resolution"] == firsts["method"].map(df.groupby("method")["resolution"].min())]
        out["timings"] = markdown_table(firsts.drop_duplicates(["method", "seed"])[[
            c for c in ("method", "seed", "tokenizer_s", "train_s", "sample_s", "train_images") if c in df.columns]])
    bench = results_dir / "bench" / "bench.md"
    if bench.exists():   # `python -m benchmark bench --official ... --out results/reference/bench`
        out["bench"] = bench.read_text()
    validation = results_dir / "evaluator_validation.md"
    if validation.exists():
        text = validation.read_text()
        out["validation"] = text[text.index("| set |"):]
    return out


def update_readme(readme: str | Path, results_dir: str | Path) -> list[str]:
    """Rewrite every generated block of ``readme`` that ``results_dir`` can fill; the names
    rewritten. A block whose figures are missing is left as it is."""
    readme, generated = Path(readme), blocks(Path(results_dir))
    text, done = readme.read_text(), []
    for name, body in generated.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
            done.append(name)
    write_text(readme, text)
    return done



