"""A study's trials at work: which participant gets which trial (balanced and resumable), the order in which they
see its candidates, which images reached them, and their votes, each recorded once; then the votes read back for
Table 7, the export and the admin page.

A vote counts only when the server delivered every candidate image of the trial to that participant (while the
trial was theirs): a choice made on a blank box is refused (409, `not_shown`), not recorded.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.study.db import Refused, study_config, transaction

MAX_ID = 2**53 - 1
"""Largest id a request may name (the largest integer every JSON reader holds exactly)."""


def check_id(value: Any, what: str) -> int:
    """`value` when it is a JSON integer id in range; else a 400 naming what it was."""
    if type(value) is not int:  # bool is an int subclass: `true` is not trial 1
        kinds = {type(None): "nothing", bool: "a boolean", float: "a non-integer number", str: "a string",
                 list: "a list", dict: "an object"}
        raise Refused(400, f"{what} must be a JSON integer id, got {kinds.get(type(value), 'another value')}")
    if not 1 <= value <= MAX_ID:
        raise Refused(400, f"{what} must be an id between 1 and {MAX_ID}")
    return value


def shown_order(draw_seed: int, pid: int, trial_id: int, candidate_ids: list[int]) -> list[int]:
    """`candidate_ids` (the trial's, in their stored order) in the order participant `pid` sees them: shuffled by a
    generator seeded with the study's draw seed, the participant and the trial, so a reload shows the same order
    and two participants mostly see different ones."""
    order = list(candidate_ids)
    random.Random(f"{draw_seed}/participant{pid}/trial{trial_id}").shuffle(order)
    return order


def _candidates(conn: sqlite3.Connection, trial_id: int) -> dict[int, int]:
    """Candidate id -> image id, in the trial's stored order."""
    rows = conn.execute("SELECT id, image_id FROM candidates WHERE trial_id = ? ORDER BY position", (trial_id,))
    return {r["id"]: r["image_id"] for r in rows}


def _load(conn: sqlite3.Connection, trial_id: int, pid: int, draw_seed: int) -> dict[str, Any]:
    t = conn.execute("SELECT * FROM trials WHERE id = ?", (trial_id,)).fetchone()
    cands = _candidates(conn, trial_id)
    refs = conn.execute("SELECT image_id FROM refs WHERE trial_id = ? ORDER BY position", (trial_id,))
    return {"trial": t["id"], "prompt": t["prompt"], "concept_noun": t["class_noun"],
            "candidates": [{"id": c, "image": cands[c]} for c in shown_order(draw_seed, pid, trial_id, list(cands))],
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
        return _load(conn, trial_id, pid, cfg.draw_seed)


def deliver(conn: sqlite3.Connection, pid: int, image_id: int) -> None:
    """Note that image `image_id` was sent to participant `pid`, as a candidate of each trial they hold that has
    it (a reference photo, or an image of a trial not theirs, is not a delivery)."""
    found = conn.execute("SELECT c.id FROM candidates c JOIN assignments a ON a.trial_id = c.trial_id "
                         "WHERE a.participant_id = ? AND c.image_id = ?", (pid, image_id)).fetchall()
    if found:
        with transaction(conn):
            conn.executemany("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?)",
                             [(pid, r["id"], time.time()) for r in found])


def vote(conn: sqlite3.Connection, pid: int, trial_id: Any, candidate_id: Any) -> int:
    """Record participant `pid`'s choice; returns the vote's id. Refused, with no vote written, when an id is not
    a JSON integer (400), the trial is already voted (409 `already_voted`), not assigned to them (403), the
    candidate is not one of the trial's (400), not every candidate image was delivered to them (409
    `not_shown`), or the trial filled up meanwhile (409 `trial_full`; their assignment to it is dropped, so
    `next_trial` moves on)."""
    trial_id, candidate_id = check_id(trial_id, "trial"), check_id(candidate_id, "candidate")
    cfg = study_config(conn)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM votes WHERE participant_id = ? AND trial_id = ?",
                        (pid, trial_id)).fetchone():
            raise Refused(409, f"you already voted on trial {trial_id}; a vote is recorded once and cannot change",
                          "already_voted")
        if not conn.execute("SELECT 1 FROM assignments WHERE participant_id = ? AND trial_id = ?",
                            (pid, trial_id)).fetchone():
            raise Refused(403, f"trial {trial_id} is not assigned to you")
        cands = _candidates(conn, trial_id)
        if candidate_id not in cands:
            raise Refused(400, f"candidate {candidate_id} is not one of trial {trial_id}'s images")
        seen = {r[0] for r in conn.execute("SELECT d.candidate_id FROM deliveries d JOIN candidates c ON c.id = "
                                           "d.candidate_id WHERE d.participant_id = ? AND c.trial_id = ?",
                                           (pid, trial_id))}
        missing = [c for c in cands if c not in seen]
        if missing:
            raise Refused(409, f"{len(missing)} of the {len(cands)} images of trial {trial_id} never reached your "
                          f"browser, so this vote is not counted; reload the images, then choose", "not_shown")
        if cfg.per_trial is not None and conn.execute("SELECT COUNT(*) FROM votes WHERE trial_id = ?",
                                                      (trial_id,)).fetchone()[0] >= cfg.per_trial:
            full = True  # the assignment goes (committed), then the refusal
            conn.execute("DELETE FROM assignments WHERE participant_id = ? AND trial_id = ?", (pid, trial_id))
        else:
            full = False
            order = shown_order(cfg.draw_seed, pid, trial_id, list(cands))
            try:
                cur = conn.execute("INSERT INTO votes (participant_id, trial_id, candidate_id, created_at, "
                                   "shown_order) VALUES (?, ?, ?, ?, ?)",
                                   (pid, trial_id, candidate_id, time.time(), json.dumps(order)))
            except sqlite3.IntegrityError:
                raise Refused(409, f"you already voted on trial {trial_id}", "already_voted") from None
            conn.execute("DELETE FROM assignments WHERE participant_id = ? AND trial_id = ?", (pid, trial_id))
    if full:
        raise Refused(409, f"trial {trial_id} already has its {cfg.per_trial} votes from other participants; "
                      f"your choice on it is not counted, and the next trial is loaded", "trial_full")
    return int(cur.lastrowid)


def image_row(conn: sqlite3.Connection, image_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()


# --- reading the votes ---------------------------------------------------------------------------------------

VOTE_COLUMNS = ("vote_id", "participant", "revoked", "trial", "concept", "seed", "prompt_index", "eval_seed",
                "prompt", "method", "variant", "shown_position", "shown_order", "image", "image_sha256",
                "created_at")
"""The export's columns. `shown_position`: where the chosen image was on the participant's screen (1 = first,
the key that picks it); `shown_order`: every candidate's method/variant in the order that participant saw them;
`image`: the chosen image's path relative to the results folder; `revoked`: 1 when the participant's link was
revoked (their votes are kept)."""


def votes(conn: sqlite3.Connection, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every vote with what was chosen and how the trial was shown, in the order recorded; votes of the
    participants labelled in `exclude` are left out."""
    cfg = study_config(conn)
    results = cfg.extra.get("results")
    names = {r["id"]: (r["trial_id"], f"{r['method']}/{r['variant']}") for r in
             conn.execute("SELECT id, trial_id, method, variant FROM candidates ORDER BY trial_id, position")}
    by_trial: dict[int, list[int]] = {}
    for cid, (trial, _) in names.items():
        by_trial.setdefault(trial, []).append(cid)
    rows = conn.execute(
        """SELECT v.id AS vote_id, p.label AS participant, p.revoked_at IS NOT NULL AS revoked, t.id AS trial,
                  t.concept, t.seed, t.prompt_index, t.eval_seed, t.prompt, c.id AS candidate, c.method, c.variant,
                  v.shown_order, i.path AS image, i.sha256 AS image_sha256, v.created_at
           FROM votes v JOIN participants p ON p.id = v.participant_id JOIN trials t ON t.id = v.trial_id
           JOIN candidates c ON c.id = v.candidate_id JOIN images i ON i.id = c.image_id ORDER BY v.id""")
    out = []
    for r in rows:
        if r["participant"] in exclude:
            continue
        row = dict(r)
        # a vote from schema 1 has no order of its own: it was shown in the trial's stored order
        order = json.loads(row.pop("shown_order")) if r["shown_order"] else by_trial[r["trial"]]
        row["shown_position"] = order.index(row.pop("candidate")) + 1
        row["shown_order"] = ";".join(names[c][1] for c in order)
        row["revoked"] = int(row["revoked"])
        if results and Path(row["image"]).is_relative_to(results):
            row["image"] = Path(row["image"]).relative_to(results).as_posix()
        out.append({k: row[k] for k in VOTE_COLUMNS})
    return out


def admin_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Progress per participant and votes per method, for the admin page."""
    people = []
    for p in conn.execute("SELECT id, label, revoked_at FROM participants ORDER BY id").fetchall():
        prog = progress(conn, p["id"])
        people.append({"participant": p["label"], "done": prog["done"], "total": prog["total"],
                       "revoked": p["revoked_at"] is not None})
    methods = [dict(r) for r in conn.execute(
        """SELECT c.method, c.variant, COUNT(v.id) AS votes FROM (SELECT DISTINCT method, variant FROM candidates) c
           LEFT JOIN candidates cc ON cc.method = c.method AND cc.variant = c.variant
           LEFT JOIN votes v ON v.candidate_id = cc.id GROUP BY c.method, c.variant ORDER BY votes DESC, c.method""")]
    total = conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    trials = conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    return {"participants": people, "methods": methods, "votes": total, "trials": trials,
            "name": study_config(conn).name}
