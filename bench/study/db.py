"""The study database (SQLite): schema, tokens, balanced assignment of trials, and votes recorded exactly once.

Every write is one short `BEGIN IMMEDIATE` transaction, so concurrent requests (threads of the web server, or
several processes) serialise on SQLite's write lock; `UNIQUE(participant_id, trial_id)` on votes is the last word
on "one vote per participant and trial". Tokens are random and only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.study.config import StudyConfig

SCHEMA_VERSION = 1
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
                           created_at REAL NOT NULL);
CREATE TABLE assignments (participant_id INTEGER NOT NULL REFERENCES participants(id),
                          trial_id INTEGER NOT NULL REFERENCES trials(id), assigned_at REAL NOT NULL,
                          PRIMARY KEY (participant_id, trial_id));
CREATE TABLE votes (id INTEGER PRIMARY KEY, participant_id INTEGER NOT NULL REFERENCES participants(id),
                    trial_id INTEGER NOT NULL REFERENCES trials(id),
                    candidate_id INTEGER NOT NULL REFERENCES candidates(id), created_at REAL NOT NULL,
                    UNIQUE (participant_id, trial_id));
"""


class Refused(Exception):
    """A request the study turns down: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    return conn


def meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def study_config(conn: sqlite3.Connection) -> StudyConfig:
    return StudyConfig.from_json(meta(conn, "config"))


def create_database(path: Path, config: StudyConfig, trials: list[dict[str, Any]]) -> str:
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
                      "admin_sha256": token_hash(admin)}
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
    if count < 1:
        raise BenchError(f"--participants must be at least 1, got {count}")
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


def participant(conn: sqlite3.Connection, token: str | None) -> sqlite3.Row:
    """The participant holding `token`; 401 when there is none, 403 when it is not a participant's."""
    if not token:
        raise Refused(401, "missing participant token; open the link you were given")
    row = conn.execute("SELECT * FROM participants WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
    if row is None:
        raise Refused(403, "unknown participant token; check the link you were given")
    return row


def check_admin(conn: sqlite3.Connection, token: str | None) -> None:
    if not token:
        raise Refused(401, "missing admin token")
    if not secrets.compare_digest(token_hash(token), meta(conn, "admin_sha256")):
        raise Refused(403, "wrong admin token")


# --- trials: assignment and votes ----------------------------------------------------------------------------


def _load(conn: sqlite3.Connection, trial_id: int) -> dict[str, Any]:
    t = conn.execute("SELECT * FROM trials WHERE id = ?", (trial_id,)).fetchone()
    cands = conn.execute("SELECT id, image_id FROM candidates WHERE trial_id = ? ORDER BY position", (trial_id,))
    refs = conn.execute("SELECT image_id FROM refs WHERE trial_id = ? ORDER BY position", (trial_id,))
    return {"trial": t["id"], "prompt": t["prompt"], "concept_noun": t["class_noun"],
            "candidates": [{"id": c["id"], "image": c["image_id"]} for c in cands],
            "references": [r["image_id"] for r in refs]}


def progress(conn: sqlite3.Connection, pid: int) -> dict[str, int]:
    """Votes given by participant `pid`, and that plus the trials still open to them (not voted on by them, and
    below the `per_trial` quota): the total they can reach as things stand."""
    cfg = study_config(conn)
    done = conn.execute("SELECT COUNT(*) FROM votes WHERE participant_id = ?", (pid,)).fetchone()[0]
    open_ = conn.execute(
        """SELECT COUNT(*) FROM trials t WHERE t.id NOT IN (SELECT trial_id FROM votes WHERE participant_id = ?)
           AND (? IS NULL OR (SELECT COUNT(*) FROM votes v WHERE v.trial_id = t.id) < ?)""",
        (pid, cfg.per_trial, cfg.per_trial)).fetchone()[0]
    return {"done": done, "total": done + open_}


def next_trial(conn: sqlite3.Connection, pid: int) -> dict[str, Any] | None:
    """The participant's open trial, or a new one: among trials they have neither voted on nor hold, one with the
    fewest votes and live assignments (then the lowest id), skipping trials whose `per_trial` quota is taken.
    None when nothing is left for them."""
    cfg = study_config(conn)
    with transaction(conn):
        held = conn.execute("SELECT trial_id FROM assignments WHERE participant_id = ? ORDER BY assigned_at LIMIT 1",
                            (pid,)).fetchone()
        if held is not None and cfg.per_trial is not None and conn.execute(
                "SELECT COUNT(*) FROM votes WHERE trial_id = ?", (held["trial_id"],)).fetchone()[0] >= cfg.per_trial:
            # filled by others while this participant was away (their place had expired): give them another
            conn.execute("DELETE FROM assignments WHERE participant_id = ? AND trial_id = ?", (pid, held["trial_id"]))
            held = None
        if held is None:
            live = time.time() - cfg.assignment_ttl_s
            row = conn.execute(
                """SELECT t.id,
                          (SELECT COUNT(*) FROM votes v WHERE v.trial_id = t.id)
                        + (SELECT COUNT(*) FROM assignments a WHERE a.trial_id = t.id AND a.assigned_at > ?) AS load
                   FROM trials t
                   WHERE t.id NOT IN (SELECT trial_id FROM votes WHERE participant_id = ?)
                     AND (? IS NULL OR load < ?)
                   ORDER BY load, t.id LIMIT 1""", (live, pid, cfg.per_trial, cfg.per_trial)).fetchone()
            if row is None:
                return None
            conn.execute("INSERT INTO assignments VALUES (?, ?, ?)", (pid, row["id"], time.time()))
            trial_id = row["id"]
        else:
            trial_id = held["trial_id"]
        return _load(conn, trial_id)


def vote(conn: sqlite3.Connection, pid: int, trial_id: Any, candidate_id: Any) -> int:
    """Record participant `pid`'s choice; returns the vote's id. Refused, with no vote written, when the trial is
    not assigned to them (403), already voted (409), or the candidate is not one of the trial's (400); and when the
    trial filled up meanwhile (409; the participant's assignment to it is dropped, so `next_trial` moves on)."""
    try:
        trial_id, candidate_id = int(trial_id), int(candidate_id)
    except (TypeError, ValueError):
        raise Refused(400, "trial and candidate must be integer ids") from None
    cfg = study_config(conn)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM votes WHERE participant_id = ? AND trial_id = ?",
                        (pid, trial_id)).fetchone():
            raise Refused(409, f"you already voted on trial {trial_id}; a vote is recorded once and cannot change")
        if not conn.execute("SELECT 1 FROM assignments WHERE participant_id = ? AND trial_id = ?",
                            (pid, trial_id)).fetchone():
            raise Refused(403, f"trial {trial_id} is not assigned to you")
        if not conn.execute("SELECT 1 FROM candidates WHERE id = ? AND trial_id = ?",
                            (candidate_id, trial_id)).fetchone():
            raise Refused(400, f"candidate {candidate_id} is not one of trial {trial_id}'s images")
        if cfg.per_trial is not None and conn.execute("SELECT COUNT(*) FROM votes WHERE trial_id = ?",
                                                      (trial_id,)).fetchone()[0] >= cfg.per_trial:
            full = True  # the assignment goes (committed), then the refusal
            conn.execute("DELETE FROM assignments WHERE participant_id = ? AND trial_id = ?", (pid, trial_id))
        else:
            full = False
            try:
                cur = conn.execute("INSERT INTO votes (participant_id, trial_id, candidate_id, created_at) "
                                   "VALUES (?, ?, ?, ?)", (pid, trial_id, candidate_id, time.time()))
            except sqlite3.IntegrityError:
                raise Refused(409, f"you already voted on trial {trial_id}") from None
            conn.execute("DELETE FROM assignments WHERE participant_id = ? AND trial_id = ?", (pid, trial_id))
    if full:
        raise Refused(409, f"trial {trial_id} already has its {cfg.per_trial} votes; load the next trial")
    return int(cur.lastrowid)


def image_row(conn: sqlite3.Connection, image_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()


# --- reading the votes ---------------------------------------------------------------------------------------

VOTE_COLUMNS = ("vote_id", "participant", "trial", "concept", "seed", "prompt_index", "eval_seed", "prompt",
                "position", "method", "variant", "image", "image_sha256", "created_at")


def votes(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every vote with what was chosen, in the order recorded."""
    rows = conn.execute(
        """SELECT v.id AS vote_id, p.label AS participant, t.id AS trial, t.concept, t.seed, t.prompt_index,
                  t.eval_seed, t.prompt, c.position, c.method, c.variant, i.path AS image,
                  i.sha256 AS image_sha256, v.created_at
           FROM votes v JOIN participants p ON p.id = v.participant_id JOIN trials t ON t.id = v.trial_id
           JOIN candidates c ON c.id = v.candidate_id JOIN images i ON i.id = c.image_id ORDER BY v.id""")
    return [dict(r) for r in rows]


def admin_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Progress per participant and votes per method, for the admin page."""
    people = []
    for p in conn.execute("SELECT id, label FROM participants ORDER BY id").fetchall():
        prog = progress(conn, p["id"])
        people.append({"participant": p["label"], "done": prog["done"], "total": prog["total"]})
    methods = [dict(r) for r in conn.execute(
        """SELECT c.method, c.variant, COUNT(v.id) AS votes FROM (SELECT DISTINCT method, variant FROM candidates) c
           LEFT JOIN candidates cc ON cc.method = c.method AND cc.variant = c.variant
           LEFT JOIN votes v ON v.candidate_id = cc.id GROUP BY c.method, c.variant ORDER BY votes DESC, c.method""")]
    total = conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    trials = conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    return {"participants": people, "methods": methods, "votes": total, "trials": trials,
            "name": study_config(conn).name}
