"""CustomConcept101 (Kumari et al., the Custom Diffusion paper's benchmark): 101 concepts, their prompts and photos.

Public layout, from the `adobe-research/custom-diffusion` repository's `customconcept101/` folder, with the photos
(`benchmark_dataset.zip`, distributed apart from the repository) unpacked beside it:

    dataset.json               [{"instance_prompt", "class_prompt", "instance_data_dir", "prompt_filename", ...}]
    prompts/<name>.txt         one prompt per line, `{}` where the subject goes ("a {} in times square.")
    benchmark_dataset/<dir>/   the concept's photos (`instance_data_dir` is `./benchmark_dataset/<dir>`)

A concept is named by its photo folder (`pet_cat1`), its class noun is `class_prompt`, and `{}` in a prompt
becomes DreamBench's `{0} {1}` (identifier, class noun), so every method builds its prompt as it does on
DreamBench. Concepts whose class noun is cat or dog get `live = True`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from bench.api import LIVE_CLASSES, BenchError, Concept

CC101_URL = "https://github.com/adobe-research/custom-diffusion"
DATASET_JSON = "dataset.json"
IMAGES_DIR = "benchmark_dataset"
IMAGES_HINT = ("the photos are distributed apart from the repository as benchmark_dataset.zip (see the "
               "repository's customconcept101/README.md); pass it with --images ZIP_OR_FOLDER")
FIX = "run `bench data download --dataset customconcept101 DIR --images ZIP`, then pass `--data DIR`"


def find_cc101(root: Path) -> Path | None:
    """The folder holding `dataset.json` and `prompts/`: `root`, or `root/customconcept101`; None if neither."""
    for candidate in (Path(root), Path(root) / "customconcept101"):
        if (candidate / DATASET_JSON).is_file() and (candidate / "prompts").is_dir():
            return candidate
    return None


def _entries(folder: Path) -> list[dict[str, Any]]:
    path = folder / DATASET_JSON
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise BenchError(f"malformed {path}: expected a non-empty list of concepts")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) and e.get(k).strip()
                                              for k in ("class_prompt", "instance_data_dir", "prompt_filename")):
            raise BenchError(f"malformed {path}: entry {i} lacks class_prompt, instance_data_dir or prompt_filename")
    return entries


def _templates(path: Path) -> tuple[str, ...]:
    """The prompt file's lines as `{0} {1}` templates (blank lines skipped; literal braces escaped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "{}" not in line:
            raise BenchError(f"{path}: line {number} '{line}' has no '{{}}' where the subject goes")
        parts = [p.replace("{", "{{").replace("}", "}}") for p in line.split("{}")]
        out.append("{0} {1}".join(parts))
    if not out:
        raise BenchError(f"{path} has no prompts")
    return tuple(out)


def load_customconcept101(root: Path) -> list[Concept]:
    """Every concept of a CustomConcept101 copy, sorted by name, with its photos and prompts."""
    from bench.photos import image_files

    folder = find_cc101(root)
    if folder is None:
        raise BenchError(f"CustomConcept101 not found: no {DATASET_JSON} and prompts/ in {root} or "
                         f"{Path(root) / 'customconcept101'}; {FIX}")
    concepts = {}
    for e in _entries(folder):
        photos = (folder / e["instance_data_dir"]).resolve()
        name = photos.name
        if (folder / IMAGES_DIR).resolve() not in photos.parents:
            raise BenchError(f"malformed {folder / DATASET_JSON}: instance_data_dir '{e['instance_data_dir']}' is "
                             f"not a folder of {IMAGES_DIR}/")
        if name in concepts:
            continue  # listed twice: the first entry wins
        if not photos.is_dir():
            raise BenchError(f"CustomConcept101 photo folder missing: {photos}; {IMAGES_HINT}")
        images = image_files(photos)
        if not images:
            raise BenchError(f"CustomConcept101 photo folder has no images: {photos}")
        prompts = (folder / e["prompt_filename"]).resolve()
        if (folder / "prompts").resolve() not in prompts.parents:
            raise BenchError(f"malformed {folder / DATASET_JSON}: prompt_filename '{e['prompt_filename']}' is not "
                             f"in prompts/")
        if not prompts.is_file():
            raise BenchError(f"CustomConcept101 prompt file missing: {prompts} (named by concept {name})")
        noun = e["class_prompt"].strip()
        concepts[name] = Concept(name, noun, images, _templates(prompts), noun in LIVE_CLASSES)
    return [concepts[n] for n in sorted(concepts)]


def check_customconcept101(root: Path) -> dict[str, Any]:
    """Validate a copy end to end (every photo decodes) and summarise it."""
    from bench.photos import decode_all

    concepts = load_customconcept101(root)
    images = [p for c in concepts for p in c.images]
    decode_all(images)
    return {"dataset": "customconcept101", "root": str(find_cc101(root)), "concepts": len(concepts),
            "images": len(images), "live": sum(c.live for c in concepts),
            "classes": len({c.class_noun for c in concepts}), "prompts": sum(len(c.prompts) for c in concepts)}


def _unpack_images(images: Path, folder: Path) -> None:
    """Put the photos at `folder/benchmark_dataset/` from a zip (holding `benchmark_dataset/...`) or a folder."""
    images = Path(images).expanduser()
    target = folder / IMAGES_DIR
    if images.is_dir():
        src = images / IMAGES_DIR if (images / IMAGES_DIR).is_dir() else images
        shutil.copytree(src, target, dirs_exist_ok=True)
        return
    if not zipfile.is_zipfile(images):
        raise BenchError(f"--images {images} is neither a folder nor a zip file; {IMAGES_HINT}")
    with zipfile.ZipFile(images) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or ".." in parts or Path(info.filename).is_absolute() or parts[0] == "__MACOSX":
                continue
            if parts[0] != IMAGES_DIR:
                parts = (IMAGES_DIR, *parts)
            out = folder.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def download_customconcept101(dest: Path, url: str = CC101_URL, images: Path | None = None) -> Path:
    """Clone the repository's `customconcept101/` folder into `dest`, add the photos from `images` (a zip or a
    folder; not needed when the repository itself holds `benchmark_dataset/`), validate, then rename into place.
    A no-op when `dest` already holds a valid copy."""
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise BenchError(f"cannot download CustomConcept101 to {dest}: it is a file; choose a folder")
        if any(dest.iterdir()):
            try:
                check_customconcept101(dest)
            except BenchError as exc:
                raise BenchError(f"{dest} is not empty and is not a valid CustomConcept101 copy ({exc}); choose an "
                                 f"empty folder") from None
            return dest
    git = shutil.which("git")
    if git is None:
        raise BenchError(f"git not found; install git, or clone {url} and copy its customconcept101/ into {dest}")
    if images is not None and not Path(images).expanduser().exists():
        raise BenchError(f"--images {images} does not exist; {IMAGES_HINT}")
    partial, clone = dest.with_name(dest.name + ".partial"), dest.with_name(dest.name + ".clone")
    for p in (partial, clone):
        shutil.rmtree(p, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([git, "clone", "--depth", "1", "--quiet", "--", url, str(clone)], capture_output=True,
                          text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}, check=False)
    try:
        if done.returncode != 0:
            lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
            raise BenchError(f"git clone {url} failed: {(errors or lines or [f'exit code {done.returncode}'])[0]}")
        source = find_cc101(clone)
        if source is None:
            raise BenchError(f"{url} has no customconcept101/{DATASET_JSON}")
        shutil.copytree(source, partial)
        if not (partial / IMAGES_DIR).is_dir():
            if images is None:
                raise BenchError(f"{url} holds the prompts but not the photos; {IMAGES_HINT}")
            _unpack_images(Path(images), partial)
        try:
            check_customconcept101(partial)
        except BenchError as exc:
            raise BenchError(f"the downloaded CustomConcept101 copy is not valid: {exc}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    if dest.exists():
        dest.rmdir()  # empty, checked above
    partial.rename(dest)
    return dest
