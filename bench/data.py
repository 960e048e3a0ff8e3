"""DreamBench and user concepts: find, parse, validate and download the data, and read images safely.

The prompts come from DreamBench's own `prompts_and_classes.txt` (parsed, never retyped), so the benchmark
asks exactly what the paper asked. Every image goes through `load_image`, so EXIF orientation, odd colour
modes and broken files are handled in one place and a bad file is a one-line `BenchError`, not a traceback.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.api import LIVE_CLASSES, BenchError, Concept
from bench.naming import unknown
from bench.photos import IMAGE_SUFFIXES, decode_all, image_files, load_image  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass

DREAMBENCH_URL = "https://github.com/google/dreambooth"
PROMPTS_FILE = "prompts_and_classes.txt"
USER_PROMPTS_FILE = "prompts.txt"
"""Class nouns of live subjects: they get the live prompt list (outfits, hats) instead of the object one."""

_FIX = "run `bench data download DIR`, then pass `--data DIR` or set BENCH_DATA"


# --- finding and parsing -----------------------------------------------------------------------------------


def find_dataset(root: Path) -> Path:
    """The folder holding `prompts_and_classes.txt`; `root` may be the repository or its `dataset/` folder.

    Both are accepted because users point at whichever they downloaded or unpacked.
    """
    root = Path(root)
    for candidate in (root / "dataset", root):
        if (candidate / PROMPTS_FILE).is_file():
            return candidate
    if not root.is_dir():
        raise BenchError(f"DreamBench not found: {root} does not exist; {_FIX}")
    raise BenchError(f"DreamBench not found: no {PROMPTS_FILE} in {root} or {root / 'dataset'}; {_FIX}")


def parse_prompts_and_classes(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """`(subject -> class noun, object templates, live templates)` from the text of `prompts_and_classes.txt`.

    The prompt lists are Python literals of `'a {0} {1} ...'.format(unique_token, class_token)` calls; `ast`
    reads the receiver string of each call, so the `{0}`/`{1}` placeholders survive untouched.
    """
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lowered = [line.lower() for line in lines]

    classes: dict[str, str] = {}
    try:
        start = lowered.index("subject_name,class") + 1
    except ValueError:
        raise BenchError(f"malformed {PROMPTS_FILE}: no 'subject_name,class' header") from None
    for number, line in enumerate(lines[start:], start + 1):  # 1-based line numbers in the file
        if not line:
            if classes:
                break  # a blank line ends the block
            continue
        subject, sep, noun = line.partition(",")
        if not sep or not subject.strip() or not noun.strip():
            raise BenchError(f"malformed {PROMPTS_FILE}: line {number} '{line}' is not 'subject_name,class' (a "
                             f"blank line ends the block)")
        classes[subject.strip()] = noun.strip()
    if not classes:
        raise BenchError(f"malformed {PROMPTS_FILE}: empty 'subject_name,class' block")

    def heading(title: str) -> int:
        if title not in lowered:
            raise BenchError(f"malformed {PROMPTS_FILE}: no '{title}' section")
        return lowered.index(title)

    obj_at, live_at = heading("object prompts"), heading("live subject prompts")
    obj_end = live_at if live_at > obj_at else len(lines)
    live_end = obj_at if obj_at > live_at else len(lines)
    return (
        classes,
        _prompt_list("\n".join(lines[obj_at + 1 : obj_end]), "Object Prompts", obj_at + 2),
        _prompt_list("\n".join(lines[live_at + 1 : live_end]), "Live Subject Prompts", live_at + 2),
    )


def _prompt_list(section: str, title: str, first_line: int = 1) -> list[str]:
    """The template strings of one `prompt_list = [...]` section, whose first line is line `first_line` of the
    file (errors name the file's line numbers)."""
    where = f"malformed {PROMPTS_FILE} ({title})"
    first, last = section.find("["), section.rfind("]")
    if first < 0 or last < first:
        raise BenchError(f"{where}: no [...] list")
    offset = first_line + section[:first].count("\n") - 1  # file line of the list's line 1, less one
    try:
        tree = ast.parse(section[first : last + 1], mode="eval").body
    except SyntaxError as exc:
        raise BenchError(f"{where}: {exc.msg} at line {(exc.lineno or 1) + offset} of the file") from None
    if not isinstance(tree, ast.List) or not tree.elts:
        raise BenchError(f"{where}: expected a non-empty list")
    prompts = []
    for elt in tree.elts:
        if isinstance(elt, ast.Call) and isinstance(elt.func, ast.Attribute) and elt.func.attr == "format":
            elt = elt.func.value
        if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
            raise BenchError(f"{where}: line {elt.lineno + offset}: element is not a string or '...'.format(...): "
                             f"{ast.unparse(elt)}")
        prompts.append(_checked_template(elt.value, where))
    return prompts


def _checked_template(template: str, where: str) -> str:
    """`template` if it formats with (identifier, class noun) and names the identifier `{0}`."""
    try:
        template.format("x", "y")
    except (IndexError, KeyError, ValueError) as exc:
        raise BenchError(f"{where}: bad template {template!r}: {exc}") from None
    if "{0}" not in template:
        raise BenchError(f"{where}: template {template!r} lacks the identifier placeholder {{0}}")
    return template


# --- concepts ----------------------------------------------------------------------------------------------


def _read_prompt_file(dataset: Path) -> tuple[dict[str, str], list[str], list[str]]:
    path = dataset / PROMPTS_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    try:
        return parse_prompts_and_classes(text)
    except BenchError as exc:
        raise BenchError(f"{path}: {exc}") from None


def load_dreambench(root: Path) -> list[Concept]:
    """All DreamBench concepts, sorted by name, with their photos and their (object or live) prompts."""
    dataset = find_dataset(root)
    classes, object_prompts, live_prompts = _read_prompt_file(dataset)
    concepts = []
    for name in sorted(classes):
        folder = dataset / name
        if not folder.is_dir():
            raise BenchError(f"DreamBench subject folder missing: {folder}; {_FIX}")
        images = image_files(folder)
        if not images:
            raise BenchError(f"DreamBench subject folder has no images: {folder}")
        live = classes[name] in LIVE_CLASSES
        prompts = live_prompts if live else object_prompts
        concepts.append(Concept(name, classes[name], images, tuple(prompts), live))
    return concepts


DATASETS = ("dreambench", "customconcept101")
"""Datasets a `--data` folder may hold; which one is told by its layout (`bench.cc101` for the second)."""


def load_concepts(root: Path) -> list[Concept]:
    """The concepts of the dataset at `root`: DreamBench, or CustomConcept101 when `root` has its layout."""
    from bench.cc101 import find_cc101, load_customconcept101

    if find_cc101(root) is not None and not (Path(root) / PROMPTS_FILE).is_file():
        return load_customconcept101(root)
    return load_dreambench(root)


def dataset_root(data: Path | None, dataset: str | None) -> Path | None:
    """`--data` checked against `--dataset`, or the dataset's default folder when only `--dataset` is given
    (`$BENCH_CC101`, else `./data/customconcept101`); None leaves the usual DreamBench default."""
    from bench.cc101 import DATASET_JSON, FIX, find_cc101
    from bench.naming import unknown

    if dataset is None:
        return data
    if dataset not in DATASETS:
        raise unknown("dataset", dataset, DATASETS)
    if dataset == "dreambench":
        if data is not None:
            find_dataset(Path(data))  # one line when it is not DreamBench
        return data
    root = Path(data or os.environ.get("BENCH_CC101") or "data/customconcept101")
    if find_cc101(root) is None:
        raise BenchError(f"CustomConcept101 not found: no {DATASET_JSON} and prompts/ in {root} or "
                         f"{root / 'customconcept101'}; {FIX}")
    return root


def select_concepts(root: Path, spec: str) -> list[Concept]:
    """The concepts named by `spec`: `all`, or comma-separated names (`dog,teapot`) in the order given."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise BenchError("no concepts given; use 'all' or names such as 'dog,teapot'")
    concepts = load_concepts(root)
    if names == ["all"]:
        return concepts
    by_name = {c.name: c for c in concepts}
    for name in names:
        if name not in by_name:
            raise unknown("concept", name, sorted(by_name))
    return [by_name[n] for n in dict.fromkeys(names)]


def load_folder_concept(
    folder: Path,
    class_noun: str,
    name: str | None = None,
    live: bool | None = None,
    prompts_root: Path | None = None,
) -> Concept:
    """A user's own concept: a folder of photos plus a class noun.

    Prompts come from `folder/prompts.txt` (one template per line, `{0}` the identifier, `{1}` the class
    noun; blank lines and `#` comments skipped), else from DreamBench at `prompts_root` (the live list when
    `live`, or by default when the class noun is cat/dog).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"concept folder not found: {folder}")
    class_noun = class_noun.strip()
    if not class_noun:
        raise BenchError(f"concept {folder} needs a class noun (e.g. 'dog', 'backpack')")
    images = image_files(folder)
    if not images:
        raise BenchError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in concept folder {folder}")
    is_live = live if live is not None else class_noun in LIVE_CLASSES

    prompt_file = folder / USER_PROMPTS_FILE
    if prompt_file.is_file():
        try:
            text = prompt_file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"cannot read {prompt_file}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        prompts = [_checked_template(t, str(prompt_file)) for t in lines if t and not t.startswith("#")]
        if not prompts:
            example = "'a {0} {1} on the beach'"
            raise BenchError(f"{prompt_file} has no prompts (one template per line, e.g. {example})")
    elif prompts_root is not None:
        _, object_prompts, live_prompts = _read_prompt_file(find_dataset(prompts_root))
        prompts = live_prompts if is_live else object_prompts
    else:
        raise BenchError(
            f"no prompts for concept {folder}: add {prompt_file} (one template per line, e.g. "
            "'a {0} {1} on the beach') or give the DreamBench data (`--data DIR` or BENCH_DATA)"
        )
    return Concept(name or folder.resolve().name, class_noun, images, tuple(prompts), is_live, dataset=False)



def user_concept_name(concept: Concept) -> str:
    """The name a user's folder concept runs under: `<folder>@<content hash>`, e.g. `mug@3fa29c1b0e`.

    The hash covers the photos' bytes (in name order), the class noun, the prompts and the live flag, so a folder
    whose photos, class noun or prompts change is a new concept (never skipped as done), and the `@` keeps it apart
    from every dataset concept (a folder named `dog` is never DreamBench's dog)."""
    import hashlib
    import json
    import re

    digest = hashlib.sha256(json.dumps({"class_noun": concept.class_noun, "prompts": list(concept.prompts),
                                        "live": concept.live}, sort_keys=True).encode())
    for path in sorted(concept.images, key=lambda p: p.name):
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", concept.name).strip("._") or "concept"
    return f"{folder}@{digest.hexdigest()[:10]}"

# --- validation and download -------------------------------------------------------------------------------


def check_dataset(root: Path) -> dict[str, Any]:
    """Validate a DreamBench copy end to end and summarise it, so a broken download fails before a run."""
    dataset = find_dataset(root)
    concepts = load_dreambench(root)
    _, object_prompts, live_prompts = _read_prompt_file(dataset)
    images = [p for c in concepts for p in c.images]
    decode_all(images)
    return {
        "root": str(dataset),
        "concepts": len(concepts),
        "images": len(images),
        "live": sum(c.live for c in concepts),
        "classes": len({c.class_noun for c in concepts}),
        "object_prompts": len(object_prompts),
        "live_prompts": len(live_prompts),
    }


def check_folder(folder: Path) -> dict[str, Any]:
    """Validate a user's concept folder: it has images and every one decodes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"concept folder not found: {folder}")
    images = image_files(folder)
    if not images:
        raise BenchError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in concept folder {folder}")
    decode_all(list(images))
    return {"root": str(folder), "images": len(images), "prompts_file": (folder / USER_PROMPTS_FILE).is_file()}


def download_dreambench(dest: Path, url: str = DREAMBENCH_URL) -> Path:
    """Clone DreamBench into `dest` and validate it; a no-op when `dest` already holds a valid copy.

    The clone goes to `DEST.partial` and is renamed only once it checks out, so an interrupted or broken
    download never leaves a folder that looks like a dataset.
    """
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise BenchError(f"cannot download DreamBench to {dest}: it is a file; choose a folder")
        if any(dest.iterdir()):
            try:
                check_dataset(dest)
            except BenchError as exc:
                raise BenchError(
                    f"{dest} is not empty and is not a valid DreamBench copy ({exc}); choose an empty folder"
                ) from None
            return dest
    git = shutil.which("git")
    if git is None:
        raise BenchError(f"git not found; install git, or clone {url} into {dest} by hand")

    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # a bad URL must fail, not ask for a password
    done = subprocess.run(
        [git, "clone", "--depth", "1", "--quiet", "--", url, str(partial)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))]  # the cause, not the advice
        reason = errors[0] if errors else lines[-1] if lines else f"exit code {done.returncode}"
        raise BenchError(f"git clone {url} failed: {reason}")
    try:
        check_dataset(partial)
    except BenchError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BenchError(f"{url} does not hold a valid DreamBench copy: {exc}") from None
    if dest.exists():
        dest.rmdir()  # empty, checked above
    partial.rename(dest)
    return dest
