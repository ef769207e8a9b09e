"""The shapes factor evaluator (benchmark/metrics/factors.py): the shipped weights read real
held-out images correctly, training is reproducible, and bad weight files fail clearly."""
import json
import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur as tv_gaussian_blur

from benchmark.datasets.shapes import FACTORS, Shapes
from benchmark.metrics import factors as fac
from benchmark.metrics.fidelity import features_to_statistics, frechet_distance


@pytest.fixture(scope="module")
def shipped():
    return fac.evaluator_weights("easy", "/nonexistent-cache")   # the shipped file: nothing is trained


def test_the_dataset_returns_every_factor_with_every_image():
    images, labels, factors = Shapes(size=64).render(np.arange(64), factors=True)
    assert set(factors) == set(FACTORS) and all(len(v) == 64 for v in factors.values())
    assert np.array_equal(factors["label"], labels.numpy())
    assert ((0 <= factors["hue"]) & (factors["hue"] < 1)).all()
    # the same scene without factors is the same image
    assert torch.equal(images, Shapes(size=64).render(np.arange(64))[0])


def test_shipped_evaluator_reads_held_out_real_images(shipped):
    sidecar = json.loads(shipped.with_suffix(".json").read_text())
    assert sidecar["sha256"] == fac.sha256(shipped) and sidecar["version"] == fac.EVALUATOR_VERSION
    acc = fac.accuracy(fac.load(shipped), n=1000)
    assert acc["class_accuracy"] >= 0.99
    assert acc["hue_median_abs_error"] < 0.02          # turns: the 12 hue bins are 0.083 wide
    assert acc["size_median_abs_error"] < 0.02 and acc["x_median_abs_error"] < 0.03


def test_evaluator_reads_blurred_images_and_other_resolutions(shipped):
    net = fac.load(shipped)
    data = Shapes(size=400, split="test")
    images, labels, factors = data.render(np.arange(400), factors=True)
    blurred = fac.predict(net, tv_gaussian_blur(images, kernel_size=7, sigma=1.0))
    assert (blurred["label"] == labels).float().mean() >= 0.95
    big = fac.predict(net, data.render(np.arange(400), resolution=64)[0])   # resized to its 32 px working size
    assert (big["label"] == labels).float().mean() >= 0.97
    err = (big["hue"].numpy() - factors["hue"]) % 1
    assert np.median(np.minimum(err, 1 - err)) < 0.03


def test_features_separate_real_from_blurred(shipped):
    net = fac.load(shipped)
    images, _ = Shapes(size=800, split="test").render(np.arange(800))
    fd = lambda a, b: frechet_distance(features_to_statistics(a), features_to_statistics(b))
    real_a, real_b = fac.predict(net, images[:400])["features"], fac.predict(net, images[400:])["features"]
    blurred = fac.predict(net, tv_gaussian_blur(images[400:], kernel_size=9, sigma=1.5))["features"]
    assert fd(real_a, blurred) > 3 * fd(real_a, real_b)


def test_training_is_deterministic_for_a_seed():
    images, _ = Shapes(split="test").render(np.arange(16))
    a, b, c = (fac.train(steps=3, batch_size=16, seed=s, progress=False) for s in (0, 0, 1))
    assert torch.equal(fac.predict(a, images)["logits"], fac.predict(b, images)["logits"])
    assert not torch.equal(fac.predict(a, images)["logits"], fac.predict(c, images)["logits"])


def test_augment_keeps_range_and_is_reproducible():
    images, _ = Shapes().render(np.arange(32))
    out, done = fac.augment(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, fac.augment(images, torch.Generator().manual_seed(3))[0]) and done.shape == (32, 3)


def test_gaussian_blur_matches_torchvision():
    images, _ = Shapes().render(np.arange(4))
    ours = fac.gaussian_blur(images, torch.full((4,), 1.0))  # radius 3 -> kernel size 7
    torch.testing.assert_close(ours, tv_gaussian_blur(images, kernel_size=7, sigma=1.0), rtol=0, atol=1e-5)


def test_a_variant_without_shipped_weights_trains_once_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setitem(fac.RECIPE, "steps", 2)
    monkeypatch.setitem(fac.RECIPE, "batch_size", 8)
    path = fac.evaluator_weights("hard", tmp_path)
    assert path.parent == tmp_path and json.loads(path.with_suffix(".json").read_text())["recipe"]["steps"] == 2
    monkeypatch.setattr(fac, "train", lambda *a, **k: pytest.fail("the cached evaluator should have been loaded"))
    assert fac.evaluator_weights("hard", tmp_path) == path


def test_bad_weight_files_name_the_file_and_the_fix(shipped, tmp_path, monkeypatch):
    broken = tmp_path / shipped.name
    broken.write_bytes(shipped.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=rf"{broken.name}.*corrupt.*delete it"):
        fac.load(broken)
    shutil.copy(shipped.with_suffix(".json"), broken.with_suffix(".json"))
    monkeypatch.setattr(fac, "SHIPPED", tmp_path)
    with pytest.raises(RuntimeError, match="does not match the SHA-256.*git checkout"):
        fac.evaluator_weights("easy", tmp_path / "cache")


def test_evaluator_says_how_blurred_an_image_is(shipped):
    """The degradation head reads blur (so the features, and FD, see it)."""
    net = fac.load(shipped)
    images, _ = Shapes(size=200, split="test").render(np.arange(200))
    sigma = fac.DEGRADATIONS.index("blur_sigma")
    clean = fac.predict(net, images)["degradation"][:, sigma].median()
    blurred = fac.predict(net, fac.gaussian_blur(images, torch.full((200,), 0.8)))["degradation"][:, sigma].median()
    assert clean < 0.2 and blurred > max(0.4, 3 * clean)
