"""The papers' tables from the released checkpoints: `python -m benchmark reproduce TABLE`.

Each table is a list of rows, each a released checkpoint at its preset with the sampler
settings the paper or README states (see the README's recipe section for the disputed ones).
A row samples ``eval.samples_per_class`` images per class into ``<results>/reproduce/<table>/
<row>/`` (resumable: rerun and only missing images are drawn), scores them with torch-fidelity
against the ADM reference batch of its resolution, and the table puts the measured FID / IS
beside the published ones (``results/paper_results.csv``). A row whose checkpoint is not in the
folder, or that was never released, says so instead of a number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import submitit
from omegaconf import DictConfig

PAPER_RESULTS = Path(__file__).resolve().parent.parent / "results" / "paper_results.csv"

# FlexVAR scripts/evaluate_c2i.sh's step lists (the 13-step one is also the README's)
FLEXVAR_STEPS = {6: [1, 2, 4, 6, 10, 16], 8: [1, 2, 3, 5, 7, 10, 13, 16], 9: [1, 2, 3, 4, 5, 7, 10, 13, 16],
                 10: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], 11: [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 16],
                 12: [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16], 13: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16],
                 14: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16]}
FLEXVAR_512 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 23, 32]


@dataclass(frozen=True)
class PaperRow:
    label: str                  # the row's name (paper_results.csv's ``model`` where published)
    method: str
    preset: str
    checkpoint: str = ""        # the released file; "" = never released
    tokenizer: str = ""
    overrides: tuple = ()       # sampler settings of this row, beyond the preset's
    resolution: int = 256
    paper: str | None = None    # paper_results.csv model name, if it differs from label

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in self.label)


def _var(depth: int, resolution: int = 256) -> PaperRow:
    return PaperRow(f"VAR-d{depth}", "var", f"var_d{depth}", f"var_d{depth}.pth", "vae_ch160v4096z32.pth",
                    resolution=resolution)


def _flexvar_steps(n: int) -> PaperRow:
    label = "FlexVAR (model not named; 13-step zero-shot)" if n == 13 else f"FlexVAR-d20, {n} steps"
    return PaperRow(label, "flexvar", "flexvar_d20", "FlexVARd20-epo249.pth", "FlexVAE.pth",
                    (f"flexvar.sampler.infer_patch_nums={FLEXVAR_STEPS[n]}",))


TABLES: dict[str, tuple[str, list[PaperRow]]] = {
    "var": ("VAR on ImageNet (README model zoo: cfg 1.5, top-k 900, top-p 0.96)",
            [_var(16), _var(20), _var(24), _var(30), PaperRow("VAR-d30-re", "var", "var_d30"), _var(36, 512)]),
    "flowar": ("FlowAR on ImageNet 256 (README evaluation commands)",
               [PaperRow("FlowAR-S", "flowar", "flowar_small", "FlowAR-S.pth", "kl16.ckpt"),
                PaperRow("FlowAR-L", "flowar", "flowar_large", "FlowAR-L.pth", "kl16.ckpt"),
                PaperRow("FlowAR-H", "flowar", "flowar_huge", "FlowAR-H.pth", "kl16.ckpt")]),
    "flexvar": ("FlexVAR on ImageNet 256 (README model zoo: cfg 2.5, top-k 900, top-p 0.95, 10 steps)",
                [PaperRow(f"FlexVAR-d{d}", "flexvar", f"flexvar_d{d}", f"FlexVARd{d}-epo{e}.pth", "FlexVAE.pth")
                 for d, e in ((16, 179), (20, 249), (24, 349))]),
    "flexvar-steps": ("FlexVAR-d20 with 6 to 14 steps, zero-shot (scripts/evaluate_c2i.sh lists, cfg 2.5)",
                      [_flexvar_steps(n) for n in FLEXVAR_STEPS]),
    "flexvar-512": ("FlexVAR-d20 at 512 px, zero-shot (README: 15 steps up to 32, cfg 3.0)",
                    [PaperRow("FlexVAR-d20, 512 px", "flexvar", "flexvar_d20", "FlexVARd20-epo249.pth", "FlexVAE.pth",
                              (f"flexvar.sampler.infer_patch_nums={FLEXVAR_512}", "flexvar.sampler.cfg=3.0"), 512)]),
}


def table(name: str) -> tuple[str, list[PaperRow]]:
    if name not in TABLES:
        from methods.config import ConfigError
        raise ConfigError(f"reproduce: unknown table {name!r}; choose one of: {', '.join(TABLES)}")
    return TABLES[name]


def row_overrides(row: PaperRow, checkpoints: Path, samples_per_class: int, extra=()) -> list[str]:
    """The config of one row: the preset, its tokenizer file, the sampling protocol."""
    from benchmark.config import load_config
    tok = load_config(row.preset)[row.method].tokenizer
    return [f"{tok}.pretrained={checkpoints / row.tokenizer}", f"eval.samples_per_class={samples_per_class}",
            *row.overrides, *extra]


@dataclass
class ReproduceJob(submitit.helpers.Checkpointable):
    """One row: sample (resumably) and score; on preemption submitit requeues it and sampling
    resumes at the first missing image."""
    cfg: DictConfig
    row: PaperRow
    table: str
    checkpoint_file: str        # (not ``checkpoint``: submitit's requeue hook has that name)
    out: str
    reference: str
    weights: str
    results: str
    needs: str | None = None
    stages: tuple = ("sample", "evaluate")

    @property
    def name(self) -> str:
        return f"reproduce/{self.table}/{self.row.slug}"

    def __call__(self) -> list[str]:
        from benchmark import distributed
        from benchmark.metrics.fidelity import evaluate_folder
        from benchmark.sample import sample_to_folder
        distributed.take_sigint()
        sample_to_folder(self.cfg, self.row.method, self.checkpoint_file, self.out, self.cfg.data.num_classes,
                         ema=self.cfg.eval.weights == "ema")
        record = evaluate_folder(self.out, self.reference, Path(self.weights), self.results,
                                 device="cuda" if self.cfg.device != "cpu" and _cuda() else "cpu")
        data = json.loads(Path(record).read_text())
        data["reproduce"] = {"table": self.table, "row": self.row.label, "paper": self.row.paper or self.row.label,
                             "checkpoint": self.checkpoint_file, "preset": self.row.preset}
        Path(record).write_text(json.dumps(data, indent=1))
        return [str(record)]


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


@dataclass
class Plan:
    jobs: list[ReproduceJob] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)   # row label -> why it has no number


def published(rows: list[PaperRow], path: Path = PAPER_RESULTS) -> pd.DataFrame:
    """The published FID / IS of each row (NaN where the sources give none)."""
    paper = pd.read_csv(path)
    paper = paper.drop_duplicates("model").set_index("model")
    keys = [r.paper or r.label for r in rows]
    return pd.DataFrame({"row": [r.label for r in rows],
                         "fid_paper": [paper["fid"].get(k) for k in keys],
                         "is_paper": [paper["is"].get(k) for k in keys],
                         "source": [paper["source"].get(k) for k in keys]})


def check_references(references: dict) -> None:
    from methods.config import ConfigError
    for res, path in references.items():
        if path and not Path(path).is_file():
            raise ConfigError(f"the {res} px reference batch {path} does not exist (VIRTUAL_imagenet{res}"
                              f"{'_labeled' if res == 256 else ''}.npz from openaipublic.blob.core.windows.net/"
                              f"diffusion/jul-2021/ref_batches/imagenet/{res}/)")


def plan_table(name: str, checkpoints, references: dict, inception_weights: str | None, samples_per_class: int,
               results: str, executor: str | None, cluster: str | None, only=(), overrides=()) -> Plan:
    """One job per row whose files are there, each row's config validated; the others with the
    reason they have no number. Everything is checked before any work."""
    from benchmark.config import load_config
    from benchmark.metrics.fidelity import inception_weights as find_weights
    from methods.config import ConfigError
    _, rows = table(name)
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        raise ConfigError(f"--checkpoints {checkpoints} is not a folder; put the released files there "
                          f"({', '.join(sorted({r.checkpoint for r in rows if r.checkpoint}))} and their tokenizers)")
    unknown = sorted(set(only) - {r.label for r in rows} - {r.slug for r in rows})
    if unknown:
        raise ConfigError(f"--only {unknown}: not rows of {name}; its rows are: {', '.join(r.slug for r in rows)}")
    if samples_per_class < 1:
        raise ConfigError(f"--samples-per-class={samples_per_class}: give at least 1 (the papers use 50)")
    check_references(references)
    weights, plan = find_weights(inception_weights), Plan()
    for row in rows:
        if only and row.label not in only and row.slug not in only:
            continue
        absent = [f for f in (row.checkpoint, row.tokenizer) if f and not (checkpoints / f).is_file()]
        if not row.checkpoint:
            plan.missing[row.label] = "no released checkpoint"
        elif absent:
            plan.missing[row.label] = f"missing {', '.join(absent)} in {checkpoints}"
        elif not references.get(row.resolution):
            plan.missing[row.label] = (f"no {row.resolution} px reference batch given (--reference-{row.resolution})"
                                       if row.resolution != 256 else "no reference batch given (--reference)")
        else:
            cfg = load_config(row.preset, row_overrides(row, checkpoints.resolve(), samples_per_class, overrides),
                              cluster)
            if executor:
                cfg.jobs.executor = executor
            for key in ("runs", "cache", "results"):   # jobs may run in another working directory
                cfg.paths[key] = str(Path(cfg.paths[key]).resolve())
            plan.jobs.append(ReproduceJob(cfg, row, name, str((checkpoints / row.checkpoint).resolve()),
                                          str((Path(results) / "reproduce" / name / row.slug).resolve()),
                                          str(Path(references[row.resolution]).resolve()), str(weights),
                                          str(Path(results).resolve())))
    for label, why in plan.missing.items():
        print(f"{label}: {why}")
    return plan


def write_table(name: str, plan: Plan, records: list[str], out_dir: Path) -> Path:
    """``<table>.md`` / ``.csv``: published beside measured, one line per row, the missing ones
    saying why."""
    from benchmark.results import markdown_table
    title, rows = table(name)
    measured = {}
    for path in records:
        data = json.loads(Path(path).read_text())
        measured[data["reproduce"]["row"]] = data
    df = published(rows)
    m = lambda label, key: (measured[label]["metrics"].get(key) if label in measured else None)
    df["fid"] = [m(r.label, "frechet_inception_distance") for r in rows]
    df["fid_difference"] = [None if f is None or pd.isna(p) else f - p for f, p in zip(df["fid"], df["fid_paper"])]
    df["is"] = [m(r.label, "inception_score_mean") for r in rows]
    df["precision"] = [m(r.label, "precision") for r in rows]
    df["recall"] = [m(r.label, "recall") for r in rows]
    df["images"] = [measured[r.label]["protocol"]["num_samples"] if r.label in measured else None for r in rows]
    df["settings"] = [", ".join([r.preset, *r.overrides]) for r in rows]
    df["note"] = [plan.missing.get(r.label, "" if r.label in measured else "not run (failed or still running)")
                  for r in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / f"{name}.csv", index=False)
    md = (f"# {title}\n\nMeasured here with the released checkpoints (torch-fidelity FID/IS against the ADM "
          "reference batch) beside the published figures; `fid_difference` = measured - published.\n\n"
          + markdown_table(df.drop(columns=["source"])))
    (out_dir / f"{name}.md").write_text(md)
    return out_dir / f"{name}.md"
