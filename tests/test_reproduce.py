"""`python -m benchmark reproduce TABLE` end to end on stand-in checkpoints: the official VAR
parity fixture's weights (made by the official code, tests/fixtures/var) saved under the released
file names, a handful of images per class, a random-weights Inception and a small reference batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_fidelity import random_inception_file

from benchmark.cli import main
from benchmark.metrics.fidelity import write_reference
from benchmark.reproduce import TABLES

VAR_FIXTURES = Path(__file__).parent / "fixtures" / "var"
# the fixture's architecture (shared_l2.json): VQVAE V=64, Cvae=8, ch=32, scales 1-4 (64 px); VAR depth 2, width 64
STAND_IN = ["msvq.vocab_size=64", "msvq.z_channels=8", "msvq.ch=32", "msvq.patch_nums=[1,2,3,4]",
            "data.resolution=64", "data.num_classes=10", "var.depth=2", "var.embed_dim=64", "var.num_heads=4",
            "var.shared_aln=true", "device=cpu", "eval.batch_size=10", "eval.autocast=off"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    body = {k: v.float() for k, v in load_file(str(VAR_FIXTURES / "vae_body.safetensors")).items()}
    tensors = load_file(str(VAR_FIXTURES / "shared_l2.safetensors"))
    ckpts = tmp / "checkpoints"
    ckpts.mkdir()
    torch.save({k[4:]: v for k, v in {**body, **tensors}.items() if k.startswith("vae.")},
               ckpts / "vae_ch160v4096z32.pth")                       # the released layouts: bare state dicts
    torch.save({k[4:]: v for k, v in tensors.items() if k.startswith("var.")}, ckpts / "var_d16.pth")
    rng = np.random.default_rng(0)
    reference = write_reference(tmp / "ref64.npz", torch.from_numpy(rng.integers(0, 256, (20, 3, 64, 64),
                                                                                   dtype=np.uint8)))
    return tmp, ckpts, reference, random_inception_file(tmp / "inception")


def run(tmp, ckpts, reference, weights, *extra):
    return main(["reproduce", "var", "--checkpoints", str(ckpts), "--reference", str(reference),
                 "--inception-weights", str(weights), "--samples-per-class", "2", "--executor", "inline",
                 "--results", str(tmp / "results"), *extra, *STAND_IN])


def test_reproduce_writes_the_table_with_published_measured_and_missing_rows(inputs, capsys):
    tmp, ckpts, reference, weights = inputs
    assert run(tmp, ckpts, reference, weights) == 0
    table = pd.read_csv(tmp / "results" / "reproduce" / "var.csv").set_index("row")
    d16 = table.loc["VAR-d16"]
    assert d16.fid_paper == 3.55 and d16.fid > 0 and d16.fid_difference == pytest.approx(d16.fid - 3.55)
    assert d16.images == 20 and np.isfinite(d16["is"]) and d16.note != d16.note   # NaN: no note
    assert table.loc["VAR-d20"].note.startswith("missing var_d20.pth")
    assert table.loc["VAR-d30-re"].note == "no released checkpoint"
    assert "no 512 px reference batch" in table.loc["VAR-d36"].note or "missing var_d36.pth" in table.loc["VAR-d36"].note
    assert len(list((tmp / "results" / "reproduce" / "var" / "VAR-d16" / "images").glob("*.png"))) == 20
    md = (tmp / "results" / "reproduce" / "var.md").read_text()
    assert "| VAR-d16 | 3.55 |" in md and "VAR-d30-re" in md


def test_reproduce_resumes_and_draws_no_image_twice(inputs, capsys):
    tmp, ckpts, reference, weights = inputs
    assert run(tmp, ckpts, reference, weights) == 0
    assert "0 new image(s)" in capsys.readouterr().out


def test_reproduce_checks_its_inputs_before_any_work(inputs, tmp_path, capsys):
    _, ckpts, reference, weights = inputs
    assert main(["reproduce", "var", "--checkpoints", str(tmp_path / "none"), "--reference", str(reference)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["reproduce", "vr", "--checkpoints", str(ckpts)]) == 2
    assert "unknown table 'vr'" in capsys.readouterr().err
    assert main(["reproduce", "var", "--checkpoints", str(ckpts), "--reference", str(tmp_path / "no.npz")]) == 2
    assert "reference batch" in capsys.readouterr().err
    assert main(["reproduce", "var", "--checkpoints", str(ckpts), "--only", "VAR-d99"]) == 2
    assert "not rows of var" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_every_table_names_the_released_files_and_the_published_rows():
    from benchmark.reproduce import published
    for name, (_, rows) in TABLES.items():
        assert rows, name
        paper = published(rows)
        for row, fid in zip(rows, paper.fid_paper):
            assert row.preset and (row.checkpoint.endswith(".pth") or not row.checkpoint)
            if row.label in ("VAR-d16", "FlowAR-L", "FlexVAR-d24", "FlexVAR (model not named; 13-step zero-shot)"):
                assert fid > 0, row.label
