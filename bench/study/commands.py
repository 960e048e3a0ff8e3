"""What the `bench study ...` and `bench table study` commands do, each a function returning text to print."""

from __future__ import annotations

import csv
import dataclasses
import io
import ipaddress
from contextlib import closing
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.naming import unknown
from bench.study import db, trials
from bench.study.config import StudyConfig, check_name

STUDIES = "_studies"


def study_path(results: Path, profile: str, name: str) -> Path:
    return Path(results) / profile / STUDIES / f"{check_name(name)}.sqlite"


def find_studies(results: Path, profile: str | None = None) -> list[Path]:
    root = Path(results)
    pattern = f"{profile}/{STUDIES}/*.sqlite" if profile else f"*/{STUDIES}/*.sqlite"
    return sorted(root.glob(pattern))


def resolve_study(results: Path, profile: str | None, name: str | None) -> Path:
    """The study named `name` (under `profile`, or any profile), or the only study there is."""
    found = find_studies(results, profile)
    if name is not None:
        hits = [p for p in found if p.stem == name]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            where = ", ".join(p.parent.parent.name for p in hits)
            raise BenchError(f"study '{name}' exists under several profiles ({where}); pass --profile")
        have = ", ".join(sorted({p.stem for p in found})) or "none"
        raise BenchError(f"no study '{name}' under {results}" + (f" for profile '{profile}'" if profile else "")
                         + f"; studies: {have}")
    if len(found) == 1:
        return found[0]
    if not found:
        raise BenchError(f"no study under {results}; create one with `bench study create --name NAME --methods ...`")
    raise BenchError(f"several studies under {results} ({', '.join(sorted(p.stem for p in found))}); pass --study")


def create(results: Path, cfg: StudyConfig, data: Path | None, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Draw the trials, write the database, and say how to go on (with the admin token, shown only here). Links
    name `host:port`, recorded in the study: `invite` and `serve` use it unless given another."""
    from bench.data import load_concepts
    from bench.paths import data_root
    from bench.study.draw import draw_trials

    path = study_path(results, cfg.profile, cfg.name)
    if path.exists():
        raise BenchError(f"study '{cfg.name}' already exists at {path}; choose another --name or delete it")
    root = data_root(data)
    concepts = {c.name: c for c in load_concepts(root)}
    for name in cfg.concepts:
        if name not in concepts:
            raise unknown("concept", name, sorted(concepts))
    cfg = dataclasses.replace(cfg, extra={**cfg.extra, "data": str(Path(root).resolve()),
                                          "results": str(Path(results).resolve())})
    check_port(host, port, probe=False)
    drawn = draw_trials(results, cfg, concepts)
    admin = db.create_database(path, cfg, drawn, {"host": host, "port": port})
    n_images = len({str(c[2]) for t in drawn for c in t["candidates"]})
    n = len(cfg.methods)
    return (f"study '{cfg.name}' created at {path}: {len(drawn)} trials, {n} candidates per trial (chance "
            f"{100 / n:.0f}%), {n_images} generated images (hashes recorded)\n"
            f"admin link (shown once; `bench study invite --admin` makes a new one): "
            f"{_base_url(host, port)}/admin/{admin}\n"
            f"links name port {port}, which `bench study serve` listens on unless given another --port\n"
            f"next: bench study invite --study {cfg.name} --participants 15 --profile {cfg.profile} "
            f"--results {results}\n")


def _base_url(host: str, port: int) -> str:
    shown = "[" + host + "]" if ":" in host else host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{port}"


def invite(path: Path, participants: int, admin: bool, host: str | None, port: int | None) -> tuple[str, str]:
    """New participants (and with `admin`, a new admin token): one personal link each, naming the study's
    address (`host`/`port` replace it, and `serve` then uses them too). Returns (links, a note for stderr)."""
    if not participants and not admin:
        raise BenchError("nothing to do: pass --participants N and/or --admin")
    if participants and not 1 <= participants <= db.MAX_PARTICIPANTS:
        raise BenchError(f"--participants must be between 1 and {db.MAX_PARTICIPANTS} per invite, got "
                         f"{participants} (the paper's study had 15 participants)")
    with closing(db.open_study(path)) as conn:
        old = db.address(conn)
        new = {"host": old["host"] if host is None else host, "port": old["port"] if port is None else port}
        check_port(new["host"], new["port"], probe=False)
        note = ""
        if new != old:
            db.set_address(conn, new["host"], new["port"])
            if db.participant_labels(conn):
                note = (f"links now name {_base_url(new['host'], new['port'])}; links printed before name "
                        f"{_base_url(old['host'], old['port'])} and reach the server only where it listens there\n")
        lines = []
        if participants:
            for label, token in db.add_participants(conn, participants):
                lines.append(f"{label}\t{_base_url(new['host'], new['port'])}/p/{token}")
        if admin:
            lines.append(f"admin\t{_base_url(new['host'], new['port'])}/admin/{db.new_admin_token(conn)}")
    note += f"`bench study serve` listens on port {new['port']} (the port these links name)\n"
    return "\n".join(lines) + "\n", note


def serve_address(path: Path, host: str | None, port: int | None) -> tuple[str, int, str]:
    """(host, port) to listen on, and a warning when they differ from what the links name: by default the study's
    recorded address (its host when that is an IP address, else 127.0.0.1)."""
    with closing(db.open_study(path)) as conn:
        linked = db.address(conn)
    if host is None:
        try:
            ipaddress.ip_address(linked["host"])
            host = linked["host"]
        except ValueError:
            host = "127.0.0.1"
    port = linked["port"] if port is None else port
    warning = ""
    if port != linked["port"]:
        warning = (f"warning: the study's links name port {linked['port']}, not {port}; participants' links will not "
                   f"reach this server (print new links with `bench study invite --port {port}`)")
    return host, port, warning


def revoke(path: Path, labels: list[str]) -> str:
    """Revoke participants: their links stop working at once; their votes stay, marked."""
    if not labels:
        raise BenchError("name the participants to revoke, e.g. `bench study revoke p03`")
    with closing(db.open_study(path)) as conn:
        fresh = db.revoke(conn, labels)
        kept = conn.execute(f"SELECT COUNT(*) FROM votes v JOIN participants p ON p.id = v.participant_id WHERE "
                            f"p.label IN ({','.join('?' * len(labels))})", labels).fetchone()[0]
    already = [label for label in labels if label not in fresh]
    return ((f"revoked {', '.join(fresh)}: their links stop working now\n" if fresh else "")
            + (f"already revoked: {', '.join(already)}\n" if already else "")
            + f"their {kept} vote(s) stay in the database, marked revoked; Table 7 and the export leave them out "
              f"with --exclude {','.join(labels)}\n")


def parse_exclude(path: Path, exclude: str | None) -> tuple[str, ...]:
    """The participant labels in a comma-separated `--exclude`, each checked against the study's participants."""
    labels = tuple(x.strip() for x in (exclude or "").split(",") if x.strip())
    if not labels:
        return ()
    with closing(db.open_study(path)) as conn:
        known = db.participant_labels(conn)
    for label in labels:
        if label not in known:
            raise BenchError(f"--exclude names no participant '{label}'; participants: {', '.join(known) or 'none'}")
    return labels


def check_host(host: str) -> bool:
    """True when `host` is a loopback address (the default); False for any other valid address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise BenchError(f"--host '{host}' is not an IP address; use 127.0.0.1 (this machine only) or the "
                         f"address of a network interface") from None


def check_port(host: str, port: int, probe: bool = True) -> None:
    """One line when the port is out of range or (with `probe`, before serving) already taken."""
    import socket

    if not 0 < port < 65536:
        raise BenchError(f"--port must be between 1 and 65535, got {port}")
    if not probe:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise BenchError(f"cannot listen on {host}:{port} ({err.strerror}); pass another --port") from None


def preflight(path: Path) -> str:
    """Refuse to serve a study whose images changed or went missing since it was created."""
    with closing(db.open_study(path)) as conn:
        changed = db.changed_images(conn)
        summary = trials.admin_summary(conn)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise BenchError(f"{len(changed)} image(s) of study '{path.stem}' differ from when it was created: "
                         f"{'; '.join(changed[:3])}{more}; the votes would not be about the images shown. Create a "
                         f"new study (`bench study create --name ...`)")
    return (f"study '{summary['name']}': {summary['trials']} trials, {len(summary['participants'])} participants, "
            f"{summary['votes']} votes so far")


def export(path: Path, out: Path | None, exclude: tuple[str, ...] = ()) -> str:
    """Every vote (but those of the participants in `exclude`) as CSV, to `out` or returned."""
    with closing(db.open_study(path)) as conn:
        rows = trials.votes(conn, exclude)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, trials.VOTE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if out is None:
        return buf.getvalue()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(buf.getvalue())
    return f"wrote {len(rows)} votes to {out}\n"


def table(path: Path, fmt: str, exclude: tuple[str, ...] = ()) -> str:
    """Table 7 of the study at `path`, leaving out the votes of the participants in `exclude`."""
    from bench.study.table import render_study

    if fmt not in ("md", "csv"):
        raise BenchError(f"unknown format '{fmt}'; valid: md, csv")
    with closing(db.open_study(path)) as conn:
        cfg, rows = db.study_config(conn), trials.votes(conn, exclude)
        n_trials = conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        revoked = tuple(r[0] for r in conn.execute("SELECT label FROM participants WHERE revoked_at IS NOT NULL "
                                                   "ORDER BY id"))
    return render_study(cfg.name, cfg.profile, rows, list(zip(cfg.methods, cfg.variants)), n_trials, fmt,
                        excluded=exclude, revoked=revoked)


def report_tables(results: Path, profile: str | None) -> list[dict[str, Any]]:
    """For `bench report`: each study's Table 7 as Markdown (`md`) with its name."""
    out = []
    for p in find_studies(results, profile):
        try:
            out.append({"name": p.stem, "md": table(p, "md")})
        except BenchError as err:  # one unreadable study must not cost the rest of the report
            out.append({"name": p.stem, "md": f"### Table 7: study `{p.stem}`\n\nnot shown: {err}\n"})
    return out
