"""The official training augmentations (data.augment), checked against the official pipelines
rebuilt here from torchvision and ADM's random_crop_arr as the official code calls them, and
the training stage with augmented views cached or encoded at every step."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from benchmark.config import load_config
from benchmark.datasets.imagefolder import augment
from methods.config import ConfigError

SIZE = 32


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8))


def views(photo, kind, n=40):
    return [np.asarray(augment(photo, SIZE, kind, np.random.default_rng(seed))) for seed in range(n)]


def crops(image: Image.Image) -> list[np.ndarray]:
    """Every SIZE x SIZE crop of ``image`` and of its mirror (what a random crop and flip can give)."""
    out = []
    for im in (image, TF.hflip(image)):
        arr = np.asarray(im)
        out += [arr[t:t + SIZE, l:l + SIZE] for t in range(arr.shape[0] - SIZE + 1) for l in range(arr.shape[1] - SIZE + 1)]
    return out


def is_one_of(view, candidates) -> bool:
    return any(np.array_equal(view, c) for c in candidates)


def test_var_views_are_lanczos_resize_then_random_crop_without_flip(photo):
    """VAR utils/data.py: Resize(round(1.125 x 32) = 36, LANCZOS) then RandomCrop(32); hflip off."""
    resized = T.Resize(round(1.125 * SIZE), interpolation=T.InterpolationMode.LANCZOS)(photo)
    plain = crops(resized)[: (resized.size[1] - SIZE + 1) * (resized.size[0] - SIZE + 1)]
    got = views(photo, "var")
    assert all(is_one_of(v, plain) for v in got)
    assert len({v.tobytes() for v in got}) > 5                 # the crop moves


def test_flowar_views_are_resize_crop_and_flip(photo):
    """FlowAR main_flowar.py: Resize(int(1.125 x 32)) (bilinear), RandomCrop(32), RandomHorizontalFlip."""
    resized = T.Resize(int(1.125 * SIZE))(photo)
    allowed = crops(resized)
    got = views(photo, "flowar")
    assert all(is_one_of(v, allowed) for v in got)
    unflipped = allowed[: len(allowed) // 2]
    assert any(not is_one_of(v, unflipped) for v in got)      # some are mirrored


def official_random_crop_arr(image, size, short, top, left):
    """guided-diffusion / FlexVAR dataset/augmentation.py random_crop_arr with its draws given."""
    while min(*image.size) >= 2 * short:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = short / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    return np.array(image)[top: top + size, left: left + size]


def test_flexvar_views_are_flip_then_adm_random_crop(photo):
    """FlexVAR dataset/imagenet.py: RandomHorizontalFlip, then random_crop_arr(32, min_crop_frac=0.88):
    short side in [32, ceil(32 / 0.88)] = [32, 37]."""
    allowed = []
    for im in (photo, TF.hflip(photo)):
        for short in range(SIZE, math.ceil(SIZE / 0.88) + 1):
            w = round(im.size[0] * short / min(im.size))
            allowed += [official_random_crop_arr(im, SIZE, short, t, l)
                        for t in range(short - SIZE + 1) for l in range(w - SIZE + 1)]
    got = views(photo, "flexvar")
    assert all(is_one_of(v, allowed) for v in got)
    assert len({v.shape for v in got}) == 1 and got[0].shape == (SIZE, SIZE, 3)


def test_views_are_seeded_and_none_is_the_centre_crop(photo):
    a = augment(photo, SIZE, "flexvar", np.random.default_rng(3))
    assert np.array_equal(np.asarray(a), np.asarray(augment(photo, SIZE, "flexvar", np.random.default_rng(3))))
    from benchmark.datasets.imagefolder import center_crop_arr
    assert np.array_equal(np.asarray(augment(photo, SIZE, "none", np.random.default_rng(3))),
                          np.asarray(center_crop_arr(photo, SIZE)))


@pytest.mark.parametrize("preset,kind", [("var_d16", "var"), ("var_d36", "var"), ("flexvar_d20", "flexvar"),
                                         ("flowar_small", "flowar"), ("flowar_huge", "flowar")])
def test_paper_presets_train_on_the_official_augmentation_encoded_every_step(preset, kind):
    data = load_config(preset).data
    assert (data.augment, data.augment_views) == (kind, 0)


def test_shapes_refuses_an_augmentation():
    with pytest.raises(ConfigError, match="data.augment='flowar'.*shapes"):
        load_config("smoke", ["data.augment=flowar"])


def make_folder(root, classes=4, per_class=6):
    rng = np.random.default_rng(1)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("views_", [0, 2])
def test_training_on_augmented_views(tmp_path, views_):
    """Two training steps from an image folder with FlowAR's augmentation: views cached (2 per
    image in the latent cache) or encoded at every step (none cached)."""
    from benchmark.cli import main
    root = make_folder(tmp_path / "data")
    paths = [f"paths.runs={tmp_path / 'runs'}", f"paths.cache={tmp_path / 'cache'}", f"paths.results={tmp_path / 'res'}"]
    assert main(["run", "--methods", "flowar", "--preset", "smoke", "--stages", "tokenizer", "latents", "train",
                 "--executor", "inline", "data.name=imagefolder", f"data.root={root}", "data.num_classes=4",
                 "data.augment=flowar", f"data.augment_views={views_}", "train.steps=2", "train.batch_size=8",
                 "kl.steps=2", *paths]) == 0
    latents = list((tmp_path / "cache" / "latents").glob("*.safetensors"))
    if views_:
        from methods.checkpoints import load_safetensors
        cache = load_safetensors(latents[0])
        assert len(cache["labels"]) == 2 * 24 and torch.equal(cache["labels"][:24], cache["labels"][24:])
        assert not torch.equal(cache["encoded"][:24], cache["encoded"][24:])   # two different views
    else:
        assert latents == []
    history = json.loads(next((tmp_path / "runs").rglob("train.json")).read_text())["history"]
    assert history and all(math.isfinite(loss) for _, loss in history)
