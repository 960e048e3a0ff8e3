"""TextBoost's training data: paired augmentation (image op + prompt words or augmentation tokens), the photo
batches, and the prompts of the knowledge-preservation loss. Used by `baselines.textboost` only.

Paired augmentation (`textboost/augment/paired_augmentation.py`, "object" ops, as `run_textboost_db.py` runs
it): with probability p one geometric op (random scale, random crop, horizontal shift, horizontal flip), with
probability p a photo collage, with probability `color_p` (0.2) grayscale; each op edits the prompt with its
augmentation token (`<zoom-in>`, `<hflip>`, ...) when augmentation tokens are on, or with plain words otherwise.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data_textboost import crop_square
from bench.models.training import Batch

AUGMENTATION_TOKENS = {
    "<grayscale>": "grayscale", "<zoom-in>": "zoom in", "<zoom-out>": "far away", "<collage>": "photo collage",
    "<crop>": "crop", "<hflip>": "ktn", "<left>": "pll", "<right>": "ucd",
}
"""TextBoost's augmentation tokens ("object" set) and the words that initialise them (`add_augmentation_tokens`).
A word of several BPE pieces gives one vector per piece (`<zoom-in_0> <zoom-in_1>`)."""

PLAIN_WORDS = {
    "<zoom-out>": ("a far away", "very small"), "<zoom-in>": ("zoomed in", "close up"), "<crop>": ("cropped",),
    "<left>": ("on the left",), "<right>": ("on the right",), "<hflip>": ("horizontally flipped",),
    "<collage>": ("photo collage of",), "<grayscale>": ("grayscale",),
}
"""The words each op puts in the prompt when augmentation tokens are off (`inversion=False` in the reference)."""

KPL_STANDIN_PROMPTS = (
    "a man riding a horse on a beach at sunset", "two children playing in the snow", "a bowl of ramen with an egg",
    "an old castle on a hill above a village", "a cup of coffee next to an open book", "a city street in the rain",
    "a lighthouse on a rocky coast during a storm", "a woman reading in a quiet library",
    "a red sports car parked in front of a house", "a field of sunflowers under a blue sky",
    "an astronaut floating above the earth", "a watercolor painting of a harbor", "a cat sleeping on a windowsill",
    "a busy market with fruit stalls", "a mountain lake reflecting the trees", "a plate of pancakes with berries",
    "a train crossing a bridge over a river", "a portrait of an old fisherman", "a neon sign in a dark alley",
    "a wooden cabin in a snowy forest", "a group of friends having a picnic in a park",
    "a pencil sketch of a sailing ship", "a dog running through tall grass", "a desert road at dawn",
    "a kitchen with copper pots on the wall", "an oil painting of a vase of tulips", "a street musician with a violin",
    "a glass skyscraper reflecting clouds", "a child flying a kite on a hill", "a bicycle leaning against a fence",
    "a close up of a dragonfly on a leaf", "a medieval knight in shining armor", "a stack of books on a desk",
    "a hot air balloon over a valley", "a bakery window full of bread", "a tiger resting in the shade",
    "a snowy street lit by lanterns", "a futuristic city at night", "a farmer driving a tractor at harvest",
    "a pair of boots by the door",
)
"""A small stand-in for InstructPix2Pix's `human-written-prompts.jsonl` (TextBoost's knowledge-preservation
prompts), written for this project because that file cannot be fetched here; `kpl_prompts_file` points at the
real one."""


def read_prompt_file(path: Path) -> tuple[str, ...]:
    """The prompts of a `human-written-prompts.jsonl` (each line's "input", and its "output" unless "NONE"), or
    of a plain text file (one prompt a line)."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return tuple(line.strip() for line in lines)
    prompts = []
    for line in lines:
        row = json.loads(line)
        prompts.append(row["input"])
        if row.get("output") not in (None, "NONE"):
            prompts.append(row["output"])
    return tuple(prompts)


# --- the image ops: PIL in, PIL out, each with the words or token it adds to the prompt ---------------------

def _resize(arr: np.ndarray, size: tuple[int, int], method: int):
    from PIL import Image

    return Image.fromarray(arr).resize(size, method)


def random_scale(image, rng: random.Random):
    """Zoom by s ~ U(0.34, 1.4) about the centre: out (s < 1) shows edge-replicated border, in (s > 1) a centre
    crop. Token: `<zoom-out>` under 0.6, `<zoom-in>` over 1.2, none between."""
    from PIL import Image

    s = rng.uniform(0.34, 1.4)
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    if s < 1:
        ph, pw = round((h / s - h) / 2), round((w / s - w) / 2)
        out = _resize(np.pad(arr, ((ph, ph), (pw, pw), (0, 0)), mode="edge"), (w, h), Image.BICUBIC)
    else:
        ch, cw = max(1, round(h / s)), max(1, round(w / s))
        top, left = (h - ch) // 2, (w - cw) // 2
        out = _resize(arr[top:top + ch, left:left + cw], (w, h), Image.BICUBIC)
    return out, ("<zoom-out>" if s < 0.6 else "<zoom-in>" if s > 1.2 else None), "prefix"


def random_crop(image, rng: random.Random):
    """A random square crop of 8-100 % of the area, resized back (`random_resized_crop`, ratio 1). `<crop>`."""
    from PIL import Image

    w, h = image.size
    side = int(round((w * h * rng.uniform(0.08, 1.0)) ** 0.5))
    cw, ch = min(side, w), min(side, h)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC), "<crop>", "either"


def horizontal_shift(image, rng: random.Random):
    """Shift by 15-30 % of the width left or right, edge-replicated. `<left>` / `<right>` at the end."""
    from PIL import Image

    arr = np.asarray(image)
    w = arr.shape[1]
    shift = int(rng.uniform(0.15, 0.3) * w)
    left = rng.randint(0, 1) == 0
    padded = np.pad(arr, ((0, 0), (shift, shift), (0, 0)), mode="edge")
    start = 2 * shift if left else 0  # content moved left: the window slides right over the padded photo
    shifted = Image.fromarray(np.ascontiguousarray(padded[:, start:start + w]))
    return shifted, ("<left>" if left else "<right>"), "suffix"


def horizontal_flip(image, rng: random.Random):
    """Mirror. `<hflip>` (the reference's flip is an augmentation op with its own token, not a plain flip)."""
    from PIL import Image

    return image.transpose(Image.FLIP_LEFT_RIGHT), "<hflip>", "either"


def photo_collage(image, rng: random.Random):
    """A 2x2 or 3x3 grid of the shrunken photo, each tile framed by a one-pixel black line. `<collage>`."""
    from PIL import Image

    n = rng.randint(2, 3)
    w, h = image.size
    tile = np.asarray(image.resize((max(3, w // n), max(3, h // n)), Image.BICUBIC)).copy()
    tile[0, :] = tile[-1, :] = 0
    tile[:, 0] = tile[:, -1] = 0
    return Image.fromarray(np.tile(tile, (n, n, 1))), "<collage>", "prefix"


def grayscale(image, rng: random.Random):
    """Grey levels in three channels. `<grayscale>` at the end."""
    return image.convert("L").convert("RGB"), "<grayscale>", "suffix"


GEOMETRIC_OPS = (random_scale, random_crop, horizontal_shift, horizontal_flip)


def edit_prompt(prompt: str, key: str | None, where: str, words: dict[str, str] | None, rng: random.Random) -> str:
    """The prompt with the op's token phrase (`words[key]`, e.g. "<hflip>") or, without tokens, its plain words.
    where: "prefix", "suffix" (", <grayscale>" / " <left>") or "either" (each with probability 1/2)."""
    if key is None:
        return prompt
    text = words[key] if words is not None else rng.choice(PLAIN_WORDS[key])
    if where == "either":
        where = "prefix" if rng.random() < 0.5 else "suffix"
    if where == "prefix":
        return f"{text} {prompt}"
    sep = " " if key in ("<left>", "<right>") else ", "
    return f"{prompt}{sep}{text}"


@dataclass
class PairedAugmentation:
    p: float
    """Probability of a geometric op, and (separately) of a collage."""
    color_p: float
    """Probability of grayscale."""
    words: dict[str, str] | None
    """Augmentation token -> its phrase in prompts ("<zoom-in_0> <zoom-in_1>"); None: plain words."""

    def __call__(self, image, prompt: str, rng: random.Random):
        if rng.random() < self.p:
            image, key, where = rng.choice(GEOMETRIC_OPS)(image, rng)
            prompt = edit_prompt(prompt, key, where, self.words, rng)
        if rng.random() < self.p:
            image, key, where = photo_collage(image, rng)
            prompt = edit_prompt(prompt, key, where, self.words, rng)
        if rng.random() < self.color_p:
            image, key, where = grayscale(image, rng)
            prompt = edit_prompt(prompt, key, where, self.words, rng)
        return image, prompt


class PhotoBatches:
    """Endless seeded batches (`bench.models.training.Batch`): (B, 3, S, S) pixels in [-1, 1], their prompts, and
    an all-ones (B, 1, 1, 1) mask (the loss counts everywhere); no cache keys, every sample is drawn anew.

    Per sample: a photo, a template formatted with the concept's phrase, the paired augmentation (if any), then
    the loader's Lanczos resize and a random (or, without augmentation, centre) square crop of side `size`.
    """

    def __init__(self, photos: list, phrase: str, templates: tuple[str, ...], batch_size: int, size: int, seed: int,
                 augmentation: PairedAugmentation | None, random_crop: bool) -> None:
        self.photos, self.phrase, self.templates = photos, phrase, templates
        self.batch_size, self.size, self.augmentation, self.random_crop = batch_size, size, augmentation, random_crop
        self.rng = random.Random(seed)

    def __next__(self) -> Batch:
        pixels, prompts = [], []
        for _ in range(self.batch_size):
            image = self.photos[self.rng.randrange(len(self.photos))]
            prompt = self.rng.choice(self.templates).format(self.phrase)
            if self.augmentation is not None:
                image, prompt = self.augmentation(image, prompt, self.rng)
            image = crop_square(image, self.size, self.rng if self.random_crop else None)
            arr = np.asarray(image, dtype=np.float32)
            pixels.append(torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0)
            prompts.append(prompt)
        return Batch(torch.stack(pixels), torch.ones(len(pixels), 1, 1, 1), prompts)


class PriorPrompts:
    """Endless seeded batches of knowledge-preservation prompts (`PriorDataset`): with probability `null_p` the
    empty prompt, with `template_p` a template with the class noun ("a photo of a dog"), else a caption."""

    def __init__(self, captions: tuple[str, ...], templates: tuple[str, ...], class_noun: str, batch_size: int,
                 null_p: float, template_p: float, seed: int) -> None:
        self.captions, self.templates, self.class_noun = captions, templates, class_noun
        self.batch_size, self.null_p, self.template_p = batch_size, null_p, template_p
        self.rng = random.Random(seed + 1)

    def __next__(self) -> list[str]:
        out = []
        for _ in range(self.batch_size):
            r = self.rng.random()
            if r < self.null_p:
                out.append("")
            elif r < self.null_p + self.template_p:
                out.append(self.rng.choice(self.templates).format(self.class_noun))
            else:
                out.append(self.rng.choice(self.captions))
        return out
