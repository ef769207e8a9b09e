"""Tests for the shapes domain evaluator (benchmark/metrics/classifier.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur as tv_gaussian_blur

from benchmark.datasets.shapes import Shapes
from benchmark.metrics import classifier as C
from benchmark.metrics.fidelity import features_to_statistics, frechet_distance


def fd(a, b) -> float:
    """The suite's one Fréchet distance, of two (N, D) feature sets."""
    return frechet_distance(features_to_statistics(a), features_to_statistics(b))


@pytest.fixture(scope="module")
def trained() -> tuple[C.ShapeClassifier, Shapes]:
    # A shorter run than the default 600 steps on a smaller pool of scenes keeps this ~17 s.
    # One intra-op thread: on a 2-core machine shared with other jobs, two OpenMP threads
    # make training up to 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = Shapes(resolution=32, size=4096)
        return C.train_classifier(dataset, steps=350, progress=False), dataset
    finally:
        torch.set_num_threads(threads)


def tiny_run(**kwargs) -> C.ShapeClassifier:
    return C.train_classifier(Shapes(size=256), steps=3, batch_size=32, progress=False, **kwargs)


# --------------------------------------------------------------------------- trained model

def test_trained_classifier_is_accurate_on_real_test_images(trained):
    model, dataset = trained
    assert C.accuracy_on_real(model, dataset, n=800) >= 0.9


def test_trained_classifier_tolerates_blur_and_other_resolutions(trained):
    model, dataset = trained
    images, labels = C._with_split(dataset, "test").render(np.arange(400))
    blurred = tv_gaussian_blur(images, kernel_size=7, sigma=1.0)
    assert C.class_consistency(model, blurred, labels) >= 0.85
    # Same scenes rendered at 64 px: the model resizes them to its 32 px working size.
    images64, labels64 = C._with_split(dataset, "test").render(np.arange(400), resolution=64)
    assert C.class_consistency(model, images64, labels64) >= 0.85


def test_features_separate_real_from_blurred(trained):
    model, dataset = trained
    images, _ = C._with_split(dataset, "test").render(np.arange(800))
    _, real_a = C.predict(model, images[:400])
    _, real_b = C.predict(model, images[400:])
    _, blurred = C.predict(model, tv_gaussian_blur(images[400:], kernel_size=9, sigma=1.5))
    assert fd(real_a, real_b) < fd(real_a, blurred)


# --------------------------------------------------------------------------- model and predict

def test_predict_shapes_batching_and_mode():
    torch.manual_seed(0)
    model = C.ShapeClassifier(num_classes=5).train()
    images = torch.rand(10, 3, 48, 48) * 2 - 1
    logits, feats = C.predict(model, images, batch_size=3)
    assert logits.shape == (10, 5) and feats.shape == (10, 128)
    assert model.training  # predict restores the caller's mode
    logits_one_batch, _ = C.predict(model, images, batch_size=256)
    torch.testing.assert_close(logits, logits_one_batch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, model.eval()(images), rtol=1e-4, atol=1e-5)


def test_training_is_deterministic_for_a_seed():
    images, _ = Shapes(split="test").render(np.arange(16))
    a, b, c = tiny_run(seed=0), tiny_run(seed=0), tiny_run(seed=1)
    assert torch.equal(C.predict(a, images)[0], C.predict(b, images)[0])
    assert not torch.equal(C.predict(a, images)[0], C.predict(c, images)[0])


def test_augment_keeps_range_and_is_reproducible():
    images, _ = Shapes().render(np.arange(32))
    out = C.augment(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, C.augment(images, torch.Generator().manual_seed(3)))


def test_gaussian_blur_matches_torchvision():
    images, _ = Shapes().render(np.arange(4))
    ours = C.gaussian_blur(images, torch.full((4,), 1.0))  # radius 3 -> kernel size 7
    torch.testing.assert_close(ours, tv_gaussian_blur(images, kernel_size=7, sigma=1.0), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- metrics

class FixedLogits(nn.Module):
    """Stand-in classifier whose logits are the (N, K, 1, 1) "images" themselves."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.head, self.anchor = num_classes, nn.Identity(), nn.Parameter(torch.zeros(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_class_consistency_on_known_logits():
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]])
    images = logits[:, :, None, None]
    assert C.class_consistency(FixedLogits(3), images, torch.tensor([0, 1, 2, 0])) == 1.0
    assert C.class_consistency(FixedLogits(3), images, torch.tensor([0, 1, 2, 2])) == 0.75
    assert C.class_consistency(FixedLogits(3), images, torch.tensor([1, 2, 0, 1])) == 0.0


def whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) samples whose sample mean is 0 and sample covariance exactly the identity."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal columns, each with zero mean
    return q * (n - 1) ** 0.5


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert abs(fd(feats, feats)) < 1e-6


def test_frechet_distance_of_a_shift_is_its_squared_norm():
    feats = torch.randn(500, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.linspace(-1, 1, 16, dtype=torch.float64)
    assert fd(feats, feats + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # For diagonal covariances: |mu_a - mu_b|^2 + sum_i (s_a,i - s_b,i)^2 with s the std devs.
    d = 8
    mu_a, mu_b = torch.zeros(d, dtype=torch.float64), torch.arange(d, dtype=torch.float64) / d
    s_a, s_b = torch.linspace(0.5, 2, d, dtype=torch.float64), torch.linspace(1, 3, d, dtype=torch.float64)
    a, b = whitened(400, d, 1) * s_a + mu_a, whitened(600, d, 2) * s_b + mu_b
    expected = float(((mu_a - mu_b) ** 2).sum() + ((s_a - s_b) ** 2).sum())
    assert fd(a, b) == pytest.approx(expected, rel=1e-6)
    # float32 tensors and numpy arrays are accepted too.
    assert fd(a.float(), b.numpy()) == pytest.approx(expected, rel=1e-4)


def test_metric_keys():
    assert (C.KEY_CLASS_CONSISTENCY, C.KEY_CLASSIFIER_FD) == ("class_consistency", "classifier_fd")


# --------------------------------------------------------------------------- cache

CACHE_KW = dict(steps=3, batch_size=32, progress=False, eval_images=64)


def test_cache_round_trip_does_not_retrain(tmp_path, monkeypatch):
    dataset = Shapes(size=256)
    first = C.load_or_train_classifier(dataset, tmp_path, **CACHE_KW)
    weights = sorted(tmp_path.glob("*.safetensors"))
    sidecars = sorted(tmp_path.glob("*.json"))
    assert len(weights) == 1 and len(sidecars) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    info = json.loads(sidecars[0].read_text())
    assert info["config"]["steps"] == 3 and info["config"]["version"] == C.CLASSIFIER_VERSION
    assert 0 <= info["test_accuracy"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(C, "train_classifier", no_training)
    second = C.load_or_train_classifier(dataset, tmp_path, **CACHE_KW)
    images, _ = Shapes(split="test").render(np.arange(16))
    for a, b in zip(C.predict(first, images), C.predict(second, images)):
        assert torch.equal(a, b)
    # A different recipe is a different cache entry.
    with pytest.raises(AssertionError, match="should have been loaded"):
        C.load_or_train_classifier(dataset, tmp_path, **{**CACHE_KW, "steps": 4})


def test_corrupt_cache_file_names_the_file(tmp_path):
    dataset = Shapes(size=256)
    C.load_or_train_classifier(dataset, tmp_path, **CACHE_KW)
    (weights,) = tmp_path.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(RuntimeError, match=rf"{weights.name}.*Delete it"):
        C.load_or_train_classifier(dataset, tmp_path, **CACHE_KW)
