"""Photos: the image files of a folder, and each one decoded strictly (truncated or corrupt files fail with one
line), upright per EXIF, in RGB. Shared by every dataset (`bench.data` for DreamBench and user folders,
`bench.cc101` for CustomConcept101)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api import BenchError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL.Image import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_files(folder: Path) -> tuple[Path, ...]:
    """The image files in `folder`, sorted; hidden files (macOS `._01.jpg`) are skipped."""
    return tuple(
        sorted(
            p
            for p in Path(folder).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    )


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
        with Image.open(path) as img:
            img.load()  # decode every byte now, so a truncated file fails here and not mid-run
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
