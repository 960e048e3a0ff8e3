"""Methods from outside the repository: a `bench.methods` entry point, or `--include path/to/module.py`.

An entry point registers lazily, as the built-in table does (`bench.registry.METHODS`, name -> target): its value
(`"package.module:Class"`) is recorded without importing it. An included file is imported (once per process, in
the process that runs the command and in each worker) and its method classes registered: every class defined in
it with a string `name` and a `train` (or `prepare`) and a `load` method (`bench.api.Method`), inherited ones
included, so `class LoRA8(LoRA)` setting only `name`, `label` and `Config` is a method.

An installed package declares its methods in its own `pyproject.toml`:

    [project.entry-points."bench.methods"]
    my_method = "my_package.method:MyMethod"

`--include` works on every command (`bench run --include toy.py --method toy ...`, `bench check-method toy
--include toy.py`); the files are passed on to worker processes through $BENCH_INCLUDE.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from bench.api import BenchError

ENTRY_POINT_GROUP = "bench.methods"
INCLUDE_ENV = "BENCH_INCLUDE"
"""Included files, separated by os.pathsep; set by `--include`, read by every process (workers inherit it)."""

_discovered: set[str] = set()


def method_classes(path: Path) -> dict[str, str]:
    """`name -> "PATH:Class"` for every method class the Python file `path` defines (imports it: `load_file`)."""
    path = Path(path).resolve()
    module = load_file(path)
    found = {}
    for attr, cls in vars(module).items():
        if (isinstance(cls, type) and cls.__module__ == module.__name__ and isinstance(getattr(cls, "name", None), str)
                and callable(getattr(cls, "load", None))
                and any(callable(getattr(cls, m, None)) for m in ("train", "prepare"))):
            found[cls.name] = f"{path}:{attr}"
    if not found:
        raise BenchError(f"--include {path}: no method class in it (a class with `name = \"...\"`, `train` and "
                         "`load`; see bench.api.Method)")
    return found


def load_file(path: Path) -> Any:
    """The module of an included file, imported once per process; a file that cannot be read or run is one line."""
    key = _module_key(path)
    if key in sys.modules:
        return sys.modules[key]
    if not path.is_file():
        raise BenchError(f"--include {path}: no such file")
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise BenchError(f"--include {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before running it: dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        del sys.modules[key]
        raise BenchError(f"--include {path}: {err.msg} at line {err.lineno}") from None
    except (OSError, UnicodeDecodeError) as err:
        del sys.modules[key]
        raise BenchError(f"--include {path}: cannot read it ({err})") from None
    except Exception as err:  # noqa: BLE001 - the plug-in's own error, as one line
        del sys.modules[key]
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise BenchError(f"--include {path}: importing it raised {type(err).__name__}: {first}") from err
    return module


def _module_key(path: Path) -> str:
    return f"bench_included_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def register(methods: dict[str, str], name: str, target: str, source: str) -> None:
    """Add `name -> target` to the registry table; the same name for another target is a one-line error."""
    if methods.get(name, target) != target:
        raise BenchError(f"method '{name}' from {source} clashes with the registered '{name}' ({methods[name]}); "
                         "rename one of them")
    methods[name] = target


def include(paths: list[str], methods: dict[str, str]) -> list[str]:
    """Import each file in `paths` and register its method classes now (a bad file fails before any work), and
    pass the files on to worker processes; the registered names."""
    names = []
    known = [p for p in os.environ.get(INCLUDE_ENV, "").split(os.pathsep) if p]
    for raw in paths:
        path = str(Path(raw).resolve())
        for name, target in method_classes(Path(path)).items():
            register(methods, name, target, path)
            names.append(name)
        if path not in known:
            known.append(path)
    os.environ[INCLUDE_ENV] = os.pathsep.join(known)
    return names


def discover(methods: dict[str, str]) -> None:
    """Register the `bench.methods` entry points and the files in $BENCH_INCLUDE (once per process and file)."""
    if "entry_points" not in _discovered:
        _discovered.add("entry_points")
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register(methods, ep.name, ep.value, f"the entry point of {getattr(ep.dist, 'name', '?')}")
    for path in os.environ.get(INCLUDE_ENV, "").split(os.pathsep):
        if path and path not in _discovered:
            _discovered.add(path)
            for name, target in method_classes(Path(path)).items():
                register(methods, name, target, path)


def load(target: str) -> Any:
    """The class a registry target names: `"module:Class"`, or `"/path/file.py:Class"` (`load_file`)."""
    module_name, _, cls = target.rpartition(":")
    if not module_name.endswith(".py"):
        return getattr(importlib.import_module(module_name), cls)
    return getattr(load_file(Path(module_name)), cls)


def take_include_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`argv` without its `--include PATH` / `--include=PATH` options, the paths), so `--include` works on every
    command without each declaring it."""
    rest, paths, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--include":
            if i + 1 >= len(argv):
                raise BenchError("--include needs a path to a Python file, e.g. --include my_method.py")
            paths.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--include="):
            paths.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, paths
