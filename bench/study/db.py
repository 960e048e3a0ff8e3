"""The study database (SQLite): schema, tokens, balanced assignment of trials, and votes recorded exactly once.

Every write is one short `BEGIN IMMEDIATE` transaction, so concurrent requests (threads of the web server, or
several processes) serialise on SQLite's write lock; `UNIQUE(participant_id, trial_id)` on votes is the last word
on "one vote per participant and trial". Tokens are random and only their SHA-256 is stored. A vote counts only
when the server delivered every candidate image of its trial to that participant (`deliveries`), and each
participant sees a trial's candidates in their own order, drawn from the study's seed (`shown_order`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.study.config import StudyConfig

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL,
                     media_type TEXT NOT NULL);
CREATE TABLE trials (id INTEGER PRIMARY KEY, concept TEXT NOT NULL, class_noun TEXT NOT NULL, seed INTEGER NOT NULL,
                     prompt_index INTEGER NOT NULL, eval_seed INTEGER NOT NULL, prompt TEXT NOT NULL,
                     UNIQUE (concept, seed, prompt_index, eval_seed));
CREATE TABLE candidates (id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL REFERENCES trials(id),
                         position INTEGER NOT NULL, method TEXT NOT NULL, variant TEXT NOT NULL,
                         image_id INTEGER NOT NULL REFERENCES images(id), UNIQUE (trial_id, position));
CREATE TABLE refs (trial_id INTEGER NOT NULL REFERENCES trials(id), position INTEGER NOT NULL,
                   image_id INTEGER NOT NULL REFERENCES images(id), PRIMARY KEY (trial_id, position));
CREATE TABLE participants (id INTEGER PRIMARY KEY, label TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE,
                           created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE assignments (participant_id INTEGER NOT NULL REFERENCES participants(id),
                          trial_id INTEGER NOT NULL REFERENCES trials(id), assigned_at REAL NOT NULL,
                          PRIMARY KEY (participant_id, trial_id));
CREATE TABLE votes (id INTEGER PRIMARY KEY, participant_id INTEGER NOT NULL REFERENCES participants(id),
                    trial_id INTEGER NOT NULL REFERENCES trials(id),
                    candidate_id INTEGER NOT NULL REFERENCES candidates(id), created_at REAL NOT NULL,
                    shown_order TEXT, UNIQUE (participant_id, trial_id));
CREATE TABLE deliveries (participant_id INTEGER NOT NULL REFERENCES participants(id),
                         candidate_id INTEGER NOT NULL REFERENCES candidates(id), delivered_at REAL NOT NULL,
                         PRIMARY KEY (participant_id, candidate_id));
"""
MIGRATE_1_TO_2 = """
ALTER TABLE participants ADD COLUMN revoked_at REAL;
ALTER TABLE votes ADD COLUMN shown_order TEXT;
CREATE TABLE deliveries (participant_id INTEGER NOT NULL REFERENCES participants(id),
                         candidate_id INTEGER NOT NULL REFERENCES candidates(id), delivered_at REAL NOT NULL,
                         PRIMARY KEY (participant_id, candidate_id));
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""
"""Schema 1 (before deliveries, per-participant orders and revocation): its votes stay as they were, with no
recorded order (they were shown in the trial's own order)."""
MAX_PARTICIPANTS = 500
"""Most participants one `bench study invite` adds (the paper's study had 15)."""
DEFAULT_ADDRESS = {"host": "127.0.0.1", "port": 8000}
"""Where links point, and `serve` listens, until `create`/`invite` are given `--host`/`--port`."""


class Refused(Exception):
    """A request the study turns down: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        """A stable word the page acts on (`already_voted`, `trial_full`, `not_shown`, `revoked`), or None."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, waiting up to 30 s for a lock."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_study(path: Path) -> sqlite3.Connection:
    """Open an existing study, refusing a file that is not one, or one from a newer bench."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"no study database at {path}; create one with `bench study create --name NAME ...`")
    conn = connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as err:
        conn.close()
        raise BenchError(f"{path} is not a study database ({err})") from None
    if row is None:
        conn.close()
        raise BenchError(f"{path} is not a study database (no schema version)")
    if int(row[0]) > SCHEMA_VERSION:
        conn.close()
        raise BenchError(f"{path} has study schema {row[0]}, newer than this bench ({SCHEMA_VERSION}); upgrade it")
    if int(row[0]) == 1:
        with transaction(conn):
            if meta(conn, "schema_version") == 1:  # another process may have migrated it meanwhile
                for statement in MIGRATE_1_TO_2.split(";"):
                    if statement.strip():
                        conn.execute(statement)
    return conn


def meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def study_config(conn: sqlite3.Connection) -> StudyConfig:
    return StudyConfig.from_json(meta(conn, "config"))


def address(conn: sqlite3.Connection) -> dict[str, Any]:
    """`{host, port}` that links name and `serve` listens on by default."""
    return {**DEFAULT_ADDRESS, **(meta(conn, "address") or {})}


def set_address(conn: sqlite3.Connection, host: str, port: int) -> None:
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('address', ?)", (json.dumps({"host": host, "port": port}),))


def create_database(path: Path, config: StudyConfig, trials: list[dict[str, Any]],
                    where: dict[str, Any] | None = None) -> str:
    """Write a new study database at `path` (built beside it, then renamed); returns the admin token.

    Each trial is `{concept, class_noun, seed, prompt_index, eval_seed, prompt, candidates: [(method, variant,
    image path)] in display order, references: [image path]}`.
    """
    path = Path(path)
    if path.exists():
        raise BenchError(f"study '{config.name}' already exists at {path}; choose another --name or delete it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    admin = secrets.token_urlsafe(18)
    conn = connect(tmp)
    try:
        conn.executescript(SCHEMA)  # a fresh temporary file: nobody else sees it before the rename
        with transaction(conn):
            values = {"schema_version": SCHEMA_VERSION, "config": config.to_json(), "created_at": time.time(),
                      "admin_sha256": token_hash(admin), "address": {**DEFAULT_ADDRESS, **(where or {})}}
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])
            image_ids: dict[str, int] = {}

            def image(p: Path) -> int:
                key = str(Path(p).resolve())
                if key not in image_ids:
                    media = "image/png" if key.lower().endswith(".png") else "image/jpeg"
                    cur = conn.execute("INSERT INTO images (path, sha256, media_type) VALUES (?, ?, ?)",
                                       (key, file_sha256(Path(key)), media))
                    image_ids[key] = int(cur.lastrowid)
                return image_ids[key]

            for t in trials:
                cur = conn.execute("INSERT INTO trials (concept, class_noun, seed, prompt_index, eval_seed, prompt) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (t["concept"], t["class_noun"], t["seed"],
                                                                 t["prompt_index"], t["eval_seed"], t["prompt"]))
                trial_id = cur.lastrowid
                for pos, (method, variant, p) in enumerate(t["candidates"]):
                    conn.execute("INSERT INTO candidates (trial_id, position, method, variant, image_id) "
                                 "VALUES (?, ?, ?, ?, ?)", (trial_id, pos, method, variant, image(p)))
                for pos, p in enumerate(t["references"]):
                    conn.execute("INSERT INTO refs VALUES (?, ?, ?)", (trial_id, pos, image(p)))
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    tmp.rename(path)
    wal = connect(path)
    wal.execute("PRAGMA journal_mode = WAL")  # concurrent readers while the server writes
    wal.close()
    return admin


def changed_images(conn: sqlite3.Connection) -> list[str]:
    """`path (reason)` for each image that is missing or whose bytes changed since the study was created."""
    out = []
    for row in conn.execute("SELECT path, sha256 FROM images ORDER BY id"):
        p = Path(row["path"])
        if not p.is_file():
            out.append(f"{p} (missing)")
        elif file_sha256(p) != row["sha256"]:
            out.append(f"{p} (changed)")
    return out


# --- participants and tokens ---------------------------------------------------------------------------------


def add_participants(conn: sqlite3.Connection, count: int, prefix: str = "p") -> list[tuple[str, str]]:
    """Add `count` participants; returns their (label, token). Only the tokens' hashes are stored."""
    if not 1 <= count <= MAX_PARTICIPANTS:
        raise BenchError(f"--participants must be between 1 and {MAX_PARTICIPANTS} per invite, got {count} (the "
                         f"paper's study had 15 participants)")
    out = []
    with transaction(conn):
        start = conn.execute("SELECT COUNT(*) FROM participants").fetchone()[0]
        for i in range(count):
            label, token = f"{prefix}{start + i + 1:02d}", secrets.token_urlsafe(18)
            conn.execute("INSERT INTO participants (label, token_sha256, created_at) VALUES (?, ?, ?)",
                         (label, token_hash(token), time.time()))
            out.append((label, token))
    return out


def new_admin_token(conn: sqlite3.Connection) -> str:
    """Replace the admin token (the old one stops working) and return the new one."""
    token = secrets.token_urlsafe(18)
    with transaction(conn):
        conn.execute("UPDATE meta SET value = ? WHERE key = 'admin_sha256'", (json.dumps(token_hash(token)),))
    return token


def revoke(conn: sqlite3.Connection, labels: list[str]) -> list[str]:
    """Revoke the participants labelled `labels` (their links stop working; their votes stay, marked); returns
    the labels that were not revoked already."""
    known = {r["label"]: r["revoked_at"] for r in conn.execute("SELECT label, revoked_at FROM participants")}
    for label in labels:
        if label not in known:
            raise BenchError(f"no participant '{label}' in this study; participants: "
                             f"{', '.join(sorted(known)) or 'none yet'}")
    fresh = [label for label in labels if known[label] is None]
    with transaction(conn):
        conn.executemany("UPDATE participants SET revoked_at = ? WHERE label = ? AND revoked_at IS NULL",
                         [(time.time(), label) for label in fresh])
    return fresh


def participant_labels(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT label FROM participants ORDER BY id")]


TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a token can look like (issued tokens are 24 URL-safe base64 characters)."""


def check_token(token: Any, who: str) -> str:
    """`token` when it can be a token; 401 when missing, 400 when not a string of up to 128 URL-safe characters."""
    if token is None or token == "":
        raise Refused(401, f"missing {who} token; open the link you were given")
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise Refused(400, f"the {who} token must be a string of up to 128 letters, digits, '-' or '_'")
    return token


def participant(conn: sqlite3.Connection, token: Any) -> sqlite3.Row:
    """The participant holding `token`; 401 when there is none, 403 when it is not a participant's or revoked."""
    token = check_token(token, "participant")
    row = conn.execute("SELECT * FROM participants WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
    if row is None:
        raise Refused(403, "unknown participant token; check the link you were given")
    if row["revoked_at"] is not None:
        raise Refused(403, "this link was revoked by the study's organiser; it no longer records votes", "revoked")
    return row


def check_admin(conn: sqlite3.Connection, token: Any) -> None:
    token = check_token(token, "admin")
    if not secrets.compare_digest(token_hash(token), meta(conn, "admin_sha256")):
        raise Refused(403, "wrong admin token")
