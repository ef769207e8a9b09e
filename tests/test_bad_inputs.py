"""Bad inputs get one clear error before any work: every case runs the command as a user types
it, and must exit non-zero, print a message naming the bad value (the pattern below) with no
traceback, and leave no run, cache or result behind. The README's "When things go wrong" table
is this list (`python tests/test_bad_inputs.py` prints it)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SMOKE = ["--preset", "smoke", "--executor", "inline"]

# (id, what the user did, argv with {placeholders}, pattern the message must match)
CASES = [
    # -- names ------------------------------------------------------------------------
    ("unknown-method", "a method that is not registered", "run --methods foo", r"unknown method 'foo'.*flowar"),
    ("override-no-value", "an override without `=` among the methods", "run --methods var train.steps 5",
     r"--methods train.steps: not a method name; a config override is key=value"),
    ("unknown-preset", "a preset that does not exist", "run --methods var --preset gigantic",
     r"preset='gigantic' is unknown; choose one of"),
    ("missing-preset-file", "a preset YAML that does not exist", "run --methods var --preset {tmp}/mine.yaml",
     r"no such file"),
    ("unknown-stage", "a stage that does not exist", "run --methods var --stages tokeniser",
     r"unknown stage\(s\) \['tokeniser'\]"),
    ("unknown-cluster", "a cluster preset that does not exist", "run --methods var --cluster nowhere",
     r"nowhere"),
    ("unknown-table", "a paper table that does not exist", "reproduce vr --checkpoints {tmp}",
     r"unknown table 'vr'; choose one of"),
    ("unknown-sample-method", "`sample` with an unregistered method",
     "sample --method foo --checkpoint {tmp}/x.pth --out {tmp}/s", r"unknown method 'foo'"),
    # -- config keys and values ------------------------------------------------------------
    ("typo-key", "a misspelt config key", "run --methods var train.stpes=3", r"Did you mean 'train.steps'"),
    ("unknown-key", "a key that exists nowhere", "run --methods var nonsense=1", r"unknown config key 'nonsense'"),
    ("not-key-value", "an override without `=`", "run --methods var train.steps",
     r"not a method name|not of the form key=value"),
    ("wrong-type", "a number that is not one", "run --methods var train.steps=abc", r"train.steps"),
    ("negative-lr", "a negative learning rate", "run --methods var train.lr=-1", r"train.lr=-1.0 is out of range"),
    ("zero-steps", "zero training steps", "run --methods var train.steps=0", r"train.steps"),
    ("zero-batch", "a zero batch size", "run --methods var train.batch_size=0", r"train.batch_size"),
    ("ema-range", "an EMA rate above 1", "run --methods var train.ema_rate=2", r"train.ema_rate"),
    ("bad-autocast", "an unknown training precision", "run --methods var train.autocast=fp8",
     r"train.autocast='fp8' is not allowed; choose one of"),
    ("bad-schedule", "an unknown lr schedule", "run --methods var train.schedule=step",
     r"train.schedule='step' is not allowed"),
    ("lin0-too-short", "lin0 with fewer steps than warm-up", "run --methods var train.schedule=lin0 train.steps=10 "
     "train.warmup_steps=20", r"schedule=lin0 needs train.steps > train.warmup_steps"),
    ("bad-variant", "an unknown shapes variant", "run --methods var data.variant=medium",
     r"data.variant='medium' is not allowed; choose one of: easy, hard"),
    ("bad-dataset", "an unknown dataset", "run --methods var data.name=cifar",
     r"data.name='cifar' is not allowed; choose one of"),
    ("bad-resolution", "a resolution the tokenizers do not take", "run --methods var data.resolution=48",
     r"data.resolution=48 is not allowed"),
    ("bad-device", "an unknown device", "run --methods var device=tpu", r"device='tpu'"),
    ("eval-weights", "an unknown weight choice", "run --methods var eval.weights=best",
     r"eval.weights='best' is not allowed"),
    ("eval-resolution", "an extrapolation size nobody samples", "run --methods var eval.resolution=100",
     r"eval.resolution=100 is not allowed"),
    ("eval-autocast", "an unknown sampling precision", "run --methods var eval.autocast=fp8",
     r"eval.autocast='fp8' is not allowed"),
    ("bad-augment", "an unknown augmentation", "run --methods var data.augment=mixup",
     r"data.augment='mixup' is not allowed"),
    ("augment-shapes", "an augmentation on shapes", "run --methods var data.augment=flowar",
     r"data.augment='flowar': shapes renders every image fresh"),
    ("negative-views", "a negative number of cached views", "run --methods var data.augment_views=-1",
     r"data.augment_views"),
    ("head-width", "a head count that does not divide the width", "run --methods flowar flowar.encoder_num_heads=5",
     r"head width"),
    ("norm-groups", "GroupNorm groups too thin", "run --methods flowar kl.norm_num_groups=4",
     r"channels per GroupNorm group"),
    ("sweep-null", "an empty sweep value", "run --methods var eval.sweep.cfg=[null]", r"eval.sweep.cfg"),
    # -- repeated / malformed arguments -------------------------------------------------------
    ("repeated-method", "a method listed twice", "run --methods var var", r"--methods lists var twice"),
    ("repeated-seed", "a seed listed twice", "run --methods var --seeds 0 0", r"--seeds lists 0 twice"),
    ("seed-not-int", "a seed that is not an integer", "run --methods var --seeds one", r"--seeds one: seeds are integers"),
    ("bad-executor", "an unknown executor", "run --methods var --executor cloud", r"invalid choice: 'cloud'"),
    # -- the machine -------------------------------------------------------------------------
    ("cuda-without-gpu", "device=cuda on a machine without a GPU", "run --methods var device=cuda",
     r"device=cuda but this machine has no CUDA GPU"),
    ("shipped-missing", "a shipped-tokenizer folder that does not exist", "run --methods var paths.shipped={tmp}/nowhere",
     r"paths.shipped=.*nowhere is not a folder"),
    ("results-under-file", "a results folder inside a file", "run --methods var paths.results={tmp}/file.txt/results",
     r"paths.results=.* cannot be written"),
    ("runs-under-file", "a runs folder inside a file", "run --methods var paths.runs={tmp}/file.txt/runs",
     r"paths.runs=.* cannot be written"),
    # -- data --------------------------------------------------------------------------------
    ("batch-over-data", "a batch larger than the training set", "run --methods var train.batch_size=1000",
     r"train.batch_size=1000 is larger than the training set \(512 images\)"),
    ("scale-list-end", "a scale list that does not end at the latent side", "run --methods var msvq.patch_nums=[1,2,3]",
     r"msvq.patch_nums=\[1, 2, 3\] must end at the latent side 4"),
    ("stride-mismatch", "a resolution that is not a multiple of the stride",
     "run --methods flowar kl.block_out_channels=[16,16,16,16,16,16] kl.norm_num_groups=2",
     r"data.resolution=16 is not a multiple of the kl tokenizer's stride 32"),
    ("folder-no-root", "an image folder without data.root", "run --methods var data.name=imagefolder",
     r"data.root is not set"),
    ("folder-missing", "an image folder that does not exist",
     "run --methods var data.name=imagefolder data.root={tmp}/nowhere", r"nowhere is not a folder"),
    ("folder-empty", "an image folder with no images", "run --methods var data.name=imagefolder data.root={tmp}/empty",
     r"imagefolder: no images found under .*empty: it needs one sub-folder of images per class"),
    ("folder-classes", "fewer class folders than data.num_classes",
     "run --methods var data.name=imagefolder data.root={tmp}/two_classes data.num_classes=4",
     r"data.num_classes=4 but .* has 2 class folders"),
    ("folder-batch", "an image folder smaller than a batch",
     "run --methods var data.name=imagefolder data.root={tmp}/four_classes data.num_classes=4 train.batch_size=64",
     r"train.batch_size=64 is larger than the training set \(8 images\)"),
    ("folder-truncated", "an image folder holding a truncated PNG",
     "run --methods var data.name=imagefolder data.root={tmp}/truncated_png data.num_classes=2 train.batch_size=2",
     r"1 file\(s\) cannot be read as images: .*c1/cut.png .*Remove or re-encode them"),
    ("folder-not-image", "an image folder holding a text file named .png",
     "run --methods var data.name=imagefolder data.root={tmp}/fake_png data.num_classes=2 train.batch_size=2",
     r"cannot be read as images: .*c0/notes.png \(cannot identify image file"),
    ("reference-missing", "an image-folder run whose reference batch is missing",
     "run --methods var data.name=imagefolder data.root={tmp}/four_classes data.num_classes=4 train.batch_size=4 "
     "eval.reference={tmp}/VIRTUAL.npz", r"eval.reference=.*VIRTUAL.npz' is not a file"),
    ("inception-missing", "an image-folder run without Inception weights offline",
     "run --methods var data.name=imagefolder data.root={tmp}/four_classes data.num_classes=4 train.batch_size=4 "
     "eval.inception_weights={tmp}/none.pth", r"Inception weights .*none.pth \(given\) do not exist"),
    # -- checkpoints -------------------------------------------------------------------------
    ("ckpt-missing", "`sample` of a checkpoint that does not exist",
     "sample --method var --preset smoke --checkpoint {tmp}/none.pth --out {tmp}/s", r"none.pth: no such checkpoint file"),
    ("ckpt-truncated", "`sample` of a truncated checkpoint",
     "sample --method var --preset smoke --checkpoint {tmp}/truncated.pth --out {tmp}/s",
     r"truncated.pth is not a readable PyTorch checkpoint.*truncated or corrupt"),
    ("ckpt-garbage", "`sample` of a file that is not a checkpoint",
     "sample --method var --preset smoke --checkpoint {tmp}/garbage.pth --out {tmp}/s",
     r"garbage.pth is not a readable PyTorch checkpoint"),
    ("ckpt-pickle", "`sample` of a pickle with arbitrary objects",
     "sample --method var --preset smoke --checkpoint {tmp}/pickle.pth --out {tmp}/s",
     r"pickle.pth holds Python objects besides tensors .*re-save just its state dict"),
    ("ckpt-nan", "`sample` of a checkpoint with NaN weights",
     "sample --method var --preset smoke --checkpoint {tmp}/nan.pth --out {tmp}/s",
     r"nan.pth holds NaN weights"),
    ("ckpt-other-method", "`sample --method var` of a FlowAR checkpoint",
     "sample --method var --preset smoke --checkpoint {tmp}/flowar.pth --out {tmp}/s",
     r"flowar.pth is not a var checkpoint: it has no blocks.N.\* / word_embed keys"),
    ("ckpt-other-size", "`sample` of a checkpoint of another depth",
     "sample --method var --preset smoke --checkpoint {tmp}/var_deeper.pth --out {tmp}/s",
     r"var_deeper.pth is a var model of depth 2.*var.depth=2"),
    ("ckpt-safetensors", "`sample` of a corrupt .safetensors",
     "sample --method var --preset smoke --checkpoint {tmp}/broken.safetensors --out {tmp}/s",
     r"broken.safetensors is not a readable safetensors file"),
    ("tok-ckpt-missing", "`sample` with a tokenizer file that does not exist",
     "sample --method var --preset smoke --checkpoint {tmp}/var.pth --tokenizer-checkpoint {tmp}/vae.pth --out {tmp}/s",
     r"msvq.pretrained=.*vae.pth' is not a file"),
    ("num-classes", "`sample --num-classes` above the model's classes",
     "sample --method var --preset smoke --checkpoint {tmp}/var.pth --out {tmp}/s --num-classes 5",
     r"--num-classes 5: the model has 4 classes"),
    # -- evaluation ----------------------------------------------------------------------------
    ("eval-samples-missing", "`evaluate` of a samples folder that does not exist",
     "evaluate --samples {tmp}/nosamples --reference {tmp}/ref.npz --inception-weights {tmp}/inception.pth",
     r"--samples .*nosamples does not exist"),
    ("eval-order", "`evaluate` of a missing folder on a machine without Inception weights",
     "evaluate --samples {tmp}/nosamples --reference {tmp}/ref.npz", r"--samples .*nosamples does not exist"),
    ("eval-reference-missing", "`evaluate` against a reference that does not exist",
     "evaluate --samples {tmp}/samples --reference {tmp}/noref.npz --inception-weights {tmp}/inception.pth",
     r"--reference .*noref.npz does not exist"),
    ("eval-weights-missing", "`evaluate` with Inception weights that do not exist",
     "evaluate --samples {tmp}/samples --reference {tmp}/ref.npz --inception-weights {tmp}/none.pth",
     r"Inception weights .*none.pth \(given\) do not exist"),
    ("eval-weights-wrong", "`evaluate` with a file that is not Inception weights",
     "evaluate --samples {tmp}/samples --reference {tmp}/ref.npz --inception-weights {tmp}/var.pth",
     r"var.pth is not torch-fidelity's Inception-v3"),
    ("eval-checkpoint-no-method", "`evaluate --checkpoint` without --method",
     "evaluate --checkpoint {tmp}/var.pth --reference {tmp}/ref.npz", r"--checkpoint needs --method"),
    ("eval-size-mismatch", "`evaluate` of 16 px samples against 32 px references",
     "evaluate --samples {tmp}/samples --reference {tmp}/ref32.npz --inception-weights {tmp}/inception.pth",
     r"samples are \(16, 16\) px but the reference images are \(32, 32\) px"),
    ("eval-run-missing", "`evaluate --run` of a folder that is no run", "evaluate --run {tmp}/norun",
     r"norun"),
    # -- results, sweeps, reports ----------------------------------------------------------------
    ("collect-empty", "`collect` with no records", "collect --results {tmp}/noresults", r"no records under"),
    ("status-none", "`status` of a sweep folder that does not exist", "status {tmp}/nosweep",
     r"no sweep.json in"),
    ("status-corrupt", "`status` of a damaged sweep.json", "status {tmp}/badsweep",
     r"badsweep/sweep.json cannot be read"),
    ("report-missing", "`report` of a results folder that does not exist", "report --results {tmp}/noresults",
     r"--results .*noresults is not a folder"),
    ("validate-small", "`validate-evaluator` with too few images", "validate-evaluator --samples 1",
     r"--samples=1 is too small"),
    ("reproduce-no-folder", "`reproduce` without the checkpoints folder", "reproduce var --checkpoints {tmp}/none",
     r"--checkpoints .*none is not a folder"),
    ("reproduce-reference", "`reproduce` with a reference batch that does not exist",
     "reproduce var --checkpoints {tmp} --reference {tmp}/noref.npz", r"256 px reference batch .*noref.npz does not exist"),
    ("reproduce-row", "`reproduce --only` of a row the table has not", "reproduce var --checkpoints {tmp} --only VAR-d99",
     r"--only \['VAR-d99'\]: not rows of var"),
    ("reproduce-per-class", "`reproduce` with no images per class",
     "reproduce var --checkpoints {tmp} --samples-per-class 0", r"--samples-per-class=0"),
]

NEEDS_SMOKE = ("run",)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files the cases point at: image folders, checkpoints of every kind, samples, references."""
    from benchmark.build import build_method
    from benchmark.config import load_config, section
    from benchmark.io import save_tensors
    from benchmark.keys import RunKeys
    from benchmark.metrics.fidelity import write_reference
    from methods.registry import TOKENIZERS, build
    from test_fidelity import random_inception_file
    tmp = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    (tmp / "file.txt").write_text("a file, not a folder")
    (tmp / "empty").mkdir()
    for name, classes in (("two_classes", 2), ("four_classes", 4)):
        for c in range(classes):
            (tmp / name / f"c{c}").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp / name / f"c{c}" / f"{i}.png")
    for name in ("truncated_png", "fake_png"):   # two classes of good images, then one bad file
        for c in range(2):
            (tmp / name / f"c{c}").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp / name / f"c{c}" / f"{i}.png")
    whole = (tmp / "truncated_png" / "c1" / "0.png").read_bytes()
    (tmp / "truncated_png" / "c1" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp / "fake_png" / "c0" / "notes.png").write_text("not an image")
    cfg = load_config("smoke", [f"paths.cache={tmp / 'cache'}"])
    torch.manual_seed(0)
    tok = build(TOKENIZERS, "msvq", cfg=section(cfg, "msvq"))
    save_tensors(tok.state_dict(), RunKeys.of(cfg, "var").tokenizer_dir / "tokenizer.safetensors")
    var = build_method(cfg, "var", tok).network.state_dict()
    torch.save(var, tmp / "var.pth")
    torch.save({k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in var.items()}, tmp / "nan.pth")
    deeper = build_method(load_config("smoke", ["var.depth=2"]), "var", tok).network.state_dict()
    torch.save(deeper, tmp / "var_deeper.pth")
    kl = build(TOKENIZERS, "kl", cfg=section(cfg, "kl"))
    torch.save(build_method(cfg, "flowar", kl).network.state_dict(), tmp / "flowar.pth")
    data = (tmp / "var.pth").read_bytes()
    (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp / "garbage.pth").write_bytes(rng.bytes(4096))
    (tmp / "broken.safetensors").write_bytes(b"\x00\x01not safetensors")
    torch.save({"weights": var, "why": {1, 2}, "tag": Path("/x")}, tmp / "pickle.pth")
    (tmp / "samples").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp / "samples" / f"{i:06d}.png")
    write_reference(tmp / "ref.npz", torch.from_numpy(rng.integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)))
    write_reference(tmp / "ref32.npz", torch.from_numpy(rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)))
    random_inception_file(tmp).rename(tmp / "inception.pth")
    (tmp / "badsweep").mkdir()
    (tmp / "badsweep" / "sweep.json").write_text('{"groups": [')
    return tmp


def argv_of(template: str, tmp: Path) -> list[str]:
    argv = template.format(tmp=tmp).split()
    if argv[0] == "sample":
        argv.append(f"paths.cache={tmp}/cache")
    if argv[0] == "run":
        argv += [*SMOKE[:2] * ("--preset" not in argv), *SMOKE[2:], f"paths.runs={tmp}/runs",
                 f"paths.cache={tmp}/cache", f"paths.results={tmp}/results"]
        # a case's own paths.* override comes last and wins
        own = [a for a in template.format(tmp=tmp).split() if a.startswith("paths.")]
        argv = [a for a in argv if not (a.startswith("paths.") and a.split("=")[0] in {o.split("=")[0] for o in own})] + own
    return argv


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_before_any_work(case, inputs, capsys, monkeypatch):
    from benchmark.cli import main
    name, _, template, pattern = case
    monkeypatch.setenv("TORCH_HOME", str(inputs / "hub"))            # no cached Inception weights
    monkeypatch.delenv("SCALEWISE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    try:
        code = main(argv_of(template, inputs))
    except SystemExit as exit_:          # argparse's own errors
        code = exit_.code
    out = capsys.readouterr()
    text = out.err + out.out
    assert code not in (0, None), text
    assert re.search(pattern, text, re.S), text
    assert "Traceback" not in text, text
    after = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    assert after == before, f"{name} left {sorted(set(after) - set(before))[:5]}"


def markdown() -> str:
    """The README table: each case, the message it gets (the pattern) and its test id."""
    rows = ["| what the user did | the error says (pattern) | test |", "|---|---|---|"]
    for name, what, _, pattern in CASES:
        rows.append(f"| {what} | `{pattern.replace('|', chr(92) + '|')}` | `test_bad_inputs.py[{name}]` |")
    return "\n".join(rows) + "\n"




def test_readme_table_is_this_list():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown() in readme, "README's bad-input table is stale: paste `python tests/test_bad_inputs.py`"
    assert len(CASES) >= 60


if __name__ == "__main__":
    sys.stdout.write(markdown())
