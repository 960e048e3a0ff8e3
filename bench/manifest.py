"""The weights a plan needs, derived from the registered methods and the model profiles (never kept by hand).

For every (method, backbone) of a plan, the `paper` profile says which roles the method uses
(`Profile.for_method`: the shared roles, and the roles a method declares for itself through `Component.methods`,
such as FLUX.1 for OminiControl or SDXL for IP-Adapter + TCD). Each role belongs to a weights *group* (what
`--weights GROUP=PATH` points elsewhere) with a hub id; a local weights folder holds each group under the last
part of its hub id (`stabilityai/sd-turbo` -> `$WEIGHTS/sd-turbo`), laid out as the hub repository is. The same
list drives `tools/paper_tables.py`'s `--weights` flags, its `check` (which names every missing role and the
folder it expects, before any run) and the runner layout in the workflow file (`paper_tables.py manifest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WeightsGroup:
    """One `--weights` group of the plan: where its weights come from and who needs them."""

    group: str
    source: str
    """The hub id (the paper profile's)."""
    folder: str
    """Its folder under a local weights root: the hub id's last part."""
    roles: dict[str, str] = field(default_factory=dict)
    """{role: the path inside the folder it reads ('' for the folder itself)}."""
    methods: set[str] = field(default_factory=set)
    backbones: set[str] = field(default_factory=set)


def folder_name(source: str) -> str:
    return source.rstrip("/").split("/")[-1]


def roles_of(method: str, backbone: str) -> dict[str, object]:
    """{role: Component} the method uses on `backbone` at paper scale, as the profile declares them."""
    from bench.models.profiles import get_profile

    return dict(get_profile("paper", backbone).for_method(method).components)


def manifest(plan: list[tuple[tuple[str, ...], str]]) -> list[WeightsGroup]:
    """Every weights group of a plan given as [(methods, backbone)], in a stable order."""
    groups: dict[tuple[str, str], WeightsGroup] = {}
    for methods, backbone in plan:
        for method in methods:
            for role, comp in roles_of(method, backbone).items():
                entry = groups.setdefault((comp.group, comp.source), WeightsGroup(comp.group, comp.source,
                                                                                  folder_name(comp.source)))
                entry.roles[role] = comp.subfolder or comp.file or ""
                entry.methods.add(method)
                entry.backbones.add(backbone)
    return sorted(groups.values(), key=lambda g: (g.folder.lower(), g.group))


def weight_flags(root: str | Path | None, methods: tuple[str, ...], backbone: str) -> list[str]:
    """`--weights GROUP=PATH` for every group these methods use on `backbone`, under the local root."""
    if not root:
        return []
    flags = []
    for entry in manifest([(methods, backbone)]):
        flags += ["--weights", f"{entry.group}={Path(root) / entry.folder}"]
    return flags


def missing(root: str | Path, groups: list[WeightsGroup]) -> list[str]:
    """One line per role whose weights are not under `root`: the role, its group, and the path expected."""
    out = []
    for entry in groups:
        for role, inside in sorted(entry.roles.items()):
            path = Path(root) / entry.folder / inside if inside else Path(root) / entry.folder
            if not path.exists():
                out.append(f"missing weights for role {role} (group {entry.group}, hub {entry.source}, used by "
                           f"{', '.join(sorted(entry.methods))}): expected {path}")
    return out


def layout(groups: list[WeightsGroup]) -> list[str]:
    """The runner layout, one line per folder (what the workflow file's header lists)."""
    by_folder: dict[str, list[WeightsGroup]] = {}
    for entry in groups:
        by_folder.setdefault(entry.folder, []).append(entry)
    lines = []
    for folder, entries in by_folder.items():
        parts = sorted({p for e in entries for p in e.roles.values() if p})
        groups_text = ", ".join(sorted({e.group for e in entries}))
        lines.append(f"$WEIGHTS/{folder}: {entries[0].source} (groups {groups_text}; "
                     f"{', '.join(parts) if parts else 'the repository itself'})")
    return lines
