"""TextBoost's DreamBench training copy, as a data option any method can use (`reference_set`).

What TextBoost's copy of DreamBench is (`nahyeonkaty/textboost`: `data/dreambooth_n1.txt`, `split_dreambooth.py`,
`textboost/dataset.py`): no pixel preprocessing at all -- no background removal, no offline crop or resize. The
copy is a split: for every one of the 30 subjects ONE listed photo is copied unchanged into the training folder
(`dreambooth_n1_train/<subject>/`), the other photos into a validation folder. Training is one-shot on that photo.
Resizing happens in the data loader, per sample: the photo's shorter side is resized to the training resolution
with Lanczos, then a square is cropped at random (at the centre when augmentation is off); `load_resized` and
`crop_square` are that transform.

The paper compared DisenBooth and Cones 2 on reference images "taken from the training dataset in TextBoost", so
a method that offers the option declares a config field `reference_set` ("all" or "textboost_n1"; validated with
`check_reference_set`) and trains on `reference_images(concept, cfg.reference_set)`. Evaluation (DINO, CLIP-I)
still compares with every photo of the subject: only the training photos change.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.api import Concept

TEXTBOOST_N1 = {
    "backpack": "02.jpg", "backpack_dog": "04.jpg", "bear_plushie": "03.jpg", "berry_bowl": "04.jpg",
    "can": "00.jpg", "candle": "02.jpg", "cat": "01.jpg", "cat2": "00.jpg", "clock": "00.jpg",
    "colorful_sneaker": "02.jpg", "dog": "00.jpg", "dog2": "00.jpg", "dog3": "00.jpg", "dog5": "00.jpg",
    "dog6": "01.jpg", "dog7": "02.jpg", "dog8": "00.jpg", "duck_toy": "01.jpg", "fancy_boot": "03.jpg",
    "grey_sloth_plushie": "01.jpg", "monster_toy": "04.jpg", "pink_sunglasses": "01.jpg", "poop_emoji": "01.jpg",
    "rc_car": "04.jpg", "red_cartoon": "01.jpg", "robot_toy": "01.jpg", "shiny_sneaker": "03.jpg",
    "teapot": "00.jpg", "vase": "02.jpg", "wolf_plushie": "01.jpg",
}
"""The one training photo per DreamBench subject in TextBoost's split (`data/dreambooth_n1.txt`)."""

REFERENCE_SETS = ("all", "textboost_n1")
"""Which of a concept's photos a method trains on: "all" = every photo of the concept (DreamBench's 4-6),
"textboost_n1" = TextBoost's training copy (the one listed photo per subject)."""


def check_reference_set(name: str) -> None:
    """A ValueError naming the valid sets (config `__post_init__` turns it into one line, exit 2)."""
    if name not in REFERENCE_SETS:
        raise ValueError(f"reference_set must be one of {', '.join(REFERENCE_SETS)}, not '{name}'")


def reference_images(concept: Concept, reference_set: str) -> tuple[Path, ...]:
    """The photos a method trains on under `reference_set`.

    "textboost_n1" on a DreamBench subject: its listed photo (matched by file name in the concept's photos).
    On a user's own folder (`--concept-dir`) or a subject the list does not name, the first photo in sorted
    order, which is what TextBoost's loader takes from a folder without a split (`--num_samples 1`: the first
    photo of the sorted listing).
    """
    check_reference_set(reference_set)
    images = tuple(sorted(concept.images, key=lambda p: p.name))
    if reference_set == "all" or not images:
        return tuple(concept.images)
    listed = TEXTBOOST_N1.get(concept.name) if concept.dataset else None
    chosen = [p for p in images if p.name == listed]
    return (chosen[0],) if chosen else images[:1]


def load_resized(path: Path, size: int):  # -> PIL.Image.Image
    """The photo (RGB, EXIF honoured) with its shorter side resized to `size` with Lanczos, aspect kept
    (TextBoost's `v2.Resize(size, LANCZOS)`)."""
    from PIL import Image

    from bench.data import load_image

    image = load_image(Path(path))
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.LANCZOS)


def crop_square(image, size: int, rng: random.Random | None):  # PIL -> PIL
    """A `size` x `size` crop: at a random position (`rng`), or at the centre when `rng` is None. The image is
    first resized (Lanczos) so its shorter side is `size`, as the loader does after augmentation."""
    from PIL import Image

    w, h = image.size
    if min(w, h) != size:
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)
        w, h = image.size
    if rng is None:
        left, top = round((w - size) / 2), round((h - size) / 2)
    else:
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    return image.crop((left, top, left + size, top + size))
