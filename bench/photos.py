"""Photos: the image files of a folder, and each one decoded strictly (truncated or corrupt files fail with one
line), upright per EXIF, in RGB. Shared by every dataset (`bench.data` for DreamBench and user folders,
`bench.cc101` for CustomConcept101).

A huge photo is decoded reduced: where its shorter side is at least twice `REDUCED_SIDE`, a JPEG is decoded at a
reduced DCT scale (`Image.draft`) and any other format is box-reduced by the integer factor (`Image.reduce`) right
after decoding, before any copy or float conversion, so the rest of the pipeline sees a photo of 2048-4095 px on
its shorter side: more than any model here trains or scores at (SDXL's 1024 px x 1.4 for the largest
augmentation scale), and peak memory stays near a normal photo's. Every DreamBench photo (at most 2048 px on the
shorter side) is decoded as it is. A photo above PIL's decompression-bomb threshold gets one line, once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api import BenchError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL.Image import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
REDUCED_SIDE = 2048
"""Photos whose shorter side is at least twice this are decoded reduced by an integer factor (module doc)."""
_SAID: set[str] = set()
"""One-line notes already written in this process (each is written once)."""


def _note(text: str) -> None:
    """Write `text` to stderr once per process."""
    if text not in _SAID:
        _SAID.add(text)
        print(text, file=sys.stderr)


def image_files(folder: Path) -> tuple[Path, ...]:
    """The image files in `folder`, sorted; hidden files (macOS `._01.jpg`) are skipped, and so are links that lead
    nowhere (a symlink loop, a dangling link), with one line naming them."""
    found, unreadable = [], []
    for p in Path(folder).iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        try:
            p.stat()
        except OSError as err:  # ELOOP (a symlink loop), ENOENT (a dangling link), EACCES
            import errno

            why = {errno.ELOOP: "symlink loop", errno.ENOENT: "dangling link"}.get(err.errno, err.strerror)
            unreadable.append(f"{p.name} ({why})")
            continue
        if p.is_file():
            found.append(p)
    if unreadable:
        _note(f"note: skipped {len(unreadable)} unreadable entr{'y' if len(unreadable) == 1 else 'ies'} in "
              f"{folder}: {', '.join(sorted(unreadable))}")
    return tuple(sorted(found))


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make PIL raise on truncated files for the duration, whatever another library switched on."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_image(path: Path, size: int | None = None) -> Image:
    """An RGB image, upright per EXIF, optionally center-cropped to a square and resized to `size`."""
    if size is not None and size <= 0:
        raise BenchError(f"image size must be positive, got {size}")
    with _strict_decoding():
        return _load_rgb(Path(path), size)


def _load_rgb(path: Path, size: int | None) -> Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        # PIL's bomb warning would repeat at every decode of the photo: `_decode_reduced` says it once instead.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img = _decode_reduced(img, path)  # every byte decoded now: a truncated file fails here, not mid-run
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except UnidentifiedImageError:
        reason = "empty file" if path.stat().st_size == 0 else "not an image, or a format PIL does not know"
        raise BenchError(f"cannot read image {path}: {reason}") from None
    except FileNotFoundError:
        raise BenchError(f"cannot read image {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        raise BenchError(f"cannot read image {path}: {str(exc) or type(exc).__name__}") from None
    if size is not None and img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    return img


def _decode_reduced(img: Image, path: Path) -> Image:
    """Decode `img`; a huge one at a reduced size (JPEG: DCT scaling before decoding; others: `reduce` right after)."""
    from PIL import Image as PILImage

    width, height = img.size
    factor = min(width, height) // REDUCED_SIDE
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        _note(f"note: {path} is {width} x {height} pixels, above PIL's decompression-bomb threshold "
              f"({limit / 1e6:.0f} MP); decoded reduced {factor}x" if factor >= 2 else
              f"note: {path} is {width} x {height} pixels, above PIL's decompression-bomb threshold "
              f"({limit / 1e6:.0f} MP)")
    if factor < 2:
        img.load()
        return img
    if img.format == "JPEG":
        img.draft(img.mode, (width // factor, height // factor))  # the DCT scale at or above this size
    img.load()
    factor = min(img.size) // REDUCED_SIDE
    return img.reduce(factor) if factor >= 2 else img


def _to_rgb(img: Image) -> Image:
    """RGB from any mode: alpha composited onto white, 16-bit and float scaled (not clipped) to 8 bit."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        img = img.convert("I")
    if img.mode in ("I", "F"):
        lo, hi = img.getextrema()
        if img.mode == "I" and lo >= 0 and hi <= 65535:
            scale, offset = 255 / 65535, 0.0  # 16-bit data (PNG, TIFF)
        elif img.mode == "F" and lo >= 0 and hi <= 1:
            scale, offset = 255.0, 0.0
        else:
            scale = 255 / (hi - lo) if hi > lo else 0.0
            offset = -lo * scale
        img = img.point(lambda v: v * scale + offset).convert("L")
    if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_all(paths: list[Path]) -> None:
    """Decode every image (in threads: PIL releases the GIL); raise for the first bad one, in path order."""
    with _strict_decoding(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(_check_image, p) for p in paths]:
            future.result()


def _check_image(path: Path) -> None:
    _load_rgb(path, None)  # the decoded image is dropped at once: 158 full-size photos would not fit
