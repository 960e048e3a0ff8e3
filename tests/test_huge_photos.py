"""Huge photos are decoded reduced, so training on one costs about what a normal photo does; PIL's bomb warning
is said once; links that lead nowhere in a concept folder are skipped with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import REDUCED_SIDE, image_files, load_image

# Load the photo as training does (`load_pixels`: decode, centre square, float tensor) twice (the harness checks
# every photo before training, then loads it), with PIL's bomb threshold lowered to 10 MP so that the 4200 x 4200
# test photo (17.6 MP, affordable in a test) counts as a bomb; report the process's peak resident memory.
SCRIPT = """
import resource, sys
import torch
from PIL import Image
from bench.models.training import load_pixels
from bench.photos import decode_all
Image.MAX_IMAGE_PIXELS = 10_000_000
decode_all([sys.argv[1]])
pixels = load_pixels([sys.argv[1]])[0]
print(tuple(pixels.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _photo(path: Path, side: int) -> Path:
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(np.tile(tile, (side // 256 + 1, side // 256 + 1, 1))[:side, :side]).save(path, compress_level=1)
    return path


def _peak(photo: Path) -> tuple[tuple, int, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(photo)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shape, rss = done.stdout.strip().rsplit(" ", 1)
    return shape, int(rss), done.stderr


def test_huge_photo_peak_memory_stays_near_a_normal_photos(tmp_path) -> None:
    normal_shape, normal, _ = _peak(_photo(tmp_path / "normal.png", 1024))
    huge_shape, huge, err = _peak(_photo(tmp_path / "huge.png", 4200))
    assert normal_shape == "(3, 1024, 1024)" and huge_shape == "(3, 2100, 2100)"  # reduced 2x, >= REDUCED_SIDE
    assert huge <= 1.5 * normal, f"peak RSS {huge / 1024:.0f} MiB against {normal / 1024:.0f} MiB"
    bomb = [line for line in err.splitlines() if "decompression-bomb" in line.lower() or "DecompressionBomb" in line]
    assert len(bomb) == 1 and "huge.png" in bomb[0] and "4200 x 4200" in bomb[0]


def test_photos_up_to_twice_the_reduced_side_decode_as_they_are(tmp_path) -> None:
    side = 2 * REDUCED_SIDE - 1  # DreamBench's largest photos have 2048 px: never reduced
    image = load_image(_photo(tmp_path / "big.png", side))
    assert image.size == (side, side)


def test_symlink_loops_are_skipped_with_one_line(tmp_path, capsys) -> None:
    folder = tmp_path / "concept"
    folder.mkdir()
    _photo(folder / "01.png", 64)
    os.symlink(folder / "02.png", folder / "02.png")  # a loop onto itself
    os.symlink(folder / "missing.png", folder / "03.png")
    assert image_files(folder) == (folder / "01.png",)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "02.png (symlink loop)" in lines[0] and "03.png (dangling link)" in lines[0]
    image_files(folder)
    assert capsys.readouterr().err == ""  # said once
