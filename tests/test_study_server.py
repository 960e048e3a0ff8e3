"""The study's web app under a real uvicorn server on 127.0.0.1: only delivered images count, bounded and typed
input (no request answers 500), security headers on every answer, hostile tokens and paths, a stopped server,
twenty participants at once; and the administration around it (revoke, --exclude, invite's bound, the port the
links name, a database of the first schema). Offline, seconds."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bench.study import db, trials
from tests.helpers import bench
from tests.study_helpers import StudyServer, create_study, see, vote_all

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


def _participants(path: Path, n: int) -> list[str]:
    conn = db.open_study(path)
    try:
        return [token for _, token in db.add_participants(conn, n)]
    finally:
        conn.close()


def _votes(path: Path) -> int:
    conn = db.open_study(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    finally:
        conn.close()


# --- what a vote needs ---------------------------------------------------------------------------------------


def test_a_vote_counts_only_when_every_candidate_reached_the_participant(world) -> None:
    path, admin = create_study(world, methods=("echodistill", "custom_diffusion", "cones2", "disenbooth"))
    [token, other] = _participants(path, 2)
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        trial = http.get("/api/next", params={"t": token}).json()
        vote = {"token": token, "trial": trial["trial"], "candidate": trial["candidates"][0]["id"]}
        r = http.post("/api/vote", json=vote)  # nothing was shown yet
        assert r.status_code == 409 and r.json()["reason"] == "not_shown"
        assert "4 of the 4 images of trial" in r.json()["error"] and "not counted" in r.json()["error"]
        for c in trial["candidates"]:  # the admin, or another participant, fetching them is no delivery
            assert http.get(f"/img/{c['image']}", params={"t": admin}).status_code == 200
            assert http.get(f"/img/{c['image']}", params={"t": other}).status_code == 200
        for ref in trial["references"]:  # nor are the reference photos
            assert http.get(f"/img/{ref}", params={"t": token}).status_code == 200
        assert http.post("/api/vote", json=vote).json()["reason"] == "not_shown"
        for c in trial["candidates"][:3]:
            assert http.get(f"/img/{c['image']}", params={"t": token}).status_code == 200
        r = http.post("/api/vote", json=vote)
        assert r.status_code == 409 and "1 of the 4 images" in r.json()["error"]
        conn = db.open_study(path)
        last = trial["candidates"][3]["image"]
        file = Path(conn.execute("SELECT path FROM images WHERE id = ?", (last,)).fetchone()[0])
        conn.close()
        original = file.read_bytes()
        file.write_bytes(original + b"changed")  # the last one changed on disk: answered 409, not delivered
        assert http.get(f"/img/{last}", params={"t": token}).status_code == 409
        assert http.post("/api/vote", json=vote).json()["reason"] == "not_shown"
        file.unlink()
        assert http.get(f"/img/{last}", params={"t": token}).status_code == 410
        assert http.post("/api/vote", json=vote).json()["reason"] == "not_shown"
        assert _votes(path) == 0
        file.write_bytes(original)
        assert http.get(f"/img/{last}", params={"t": token}).status_code == 200
        r = http.post("/api/vote", json=vote)
        assert r.status_code == 200 and r.json()["progress"]["done"] == 1
    assert _votes(path) == 1


def test_a_trial_filled_meanwhile_is_refused_with_its_reason(world) -> None:
    path, _ = create_study(world, per_trial=1, trials=2)
    [a, b] = _participants(path, 2)
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        held = http.get("/api/next", params={"t": a}).json()
        see(http, a, held)
        conn = db.open_study(path)
        conn.execute("UPDATE assignments SET assigned_at = assigned_at - 3600")  # a's place expired
        conn.close()
        assert http.get("/api/next", params={"t": a}).json()["progress"] == {"done": 0, "total": 2}
        taken = http.get("/api/next", params={"t": b}).json()
        assert taken["trial"] == held["trial"]
        see(http, b, taken)
        assert http.post("/api/vote", json={"token": b, "trial": taken["trial"],
                                            "candidate": taken["candidates"][0]["id"]}).status_code == 200
        r = http.post("/api/vote", json={"token": a, "trial": held["trial"], "candidate": held["candidates"][0]["id"]})
        assert r.status_code == 409 and r.json()["reason"] == "trial_full" and "next trial" in r.json()["error"]
        after = http.get("/api/next", params={"t": a}).json()
        assert after["trial"] != held["trial"] and after["progress"] == {"done": 0, "total": 1}


# --- bounded, typed input ------------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused_before_they_are_read(world) -> None:
    from bench.study.app import BODY_LIMIT

    path, _ = create_study(world)
    [token] = _participants(path, 1)
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/api/vote", content=b"x" * 3_000_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and f"at most {BODY_LIMIT} bytes" in r.json()["error"]
        r = http.post("/api/vote", json={"token": token, "trial": 1, "candidate": 1, "pad": "x" * BODY_LIMIT})
        assert r.status_code == 413
        assert http.get("/api/next", params={"t": token}).status_code == 200  # the server goes on
        # a chunked body declares no length: it is cut off at the limit while streaming
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"POST /api/vote HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                        b"Content-Type: application/json\r\n\r\n")
            chunk = b"x" * 1024
            try:
                for _ in range(8):
                    raw.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered 413 and closed before the client finished sending: the cut-off itself
            answer = raw.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        assert b"x-content-type-options: nosniff" in answer.lower()
    assert _votes(path) == 0


MALFORMED_BODIES = [
    b'{"trial": 1e400, "candidate": Infinity}', b'{"trial": NaN, "candidate": 1}', b'{"trial": -Infinity}',
    b'{"trial": 1' + b"0" * 30 + b', "candidate": 1}', b'{"trial": 99999999999999999999999, "candidate": 1}',
    b'{"trial": 1.0, "candidate": 1}', b'{"trial": 1.9, "candidate": 1}', b'{"trial": true, "candidate": 1}',
    b'{"trial": "1", "candidate": "1"}', b'{"trial": null, "candidate": 1}', b'{"trial": [1], "candidate": {}}',
    b'{"trial": 0, "candidate": 1}', b'{"trial": -1, "candidate": 1}', b'{"trial": 9007199254740992, "candidate": 1}',
    b'{"trial": 1e2, "candidate": 1}', b'{"trial": 1, "candidate": 1, "extra": 1}', b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 800 + b"1" + b"}" * 800, b"\xff\xfe\x00{", b"{", b"", b"null", b"true", b"1", b'"vote"', b"[]",
    b'{"trial": 1, "candidate": 1, "token": 12345}', b'{"trial": 1, "candidate": 1, "token": ["a"]}',
    b'{"trial": 1, "candidate": 1, "token": {"$ne": null}}', b'{"trial": 1, "candidate": 1, "token": false}',
    b'{"trial": 1, "candidate": 1, "token": "' + b"t" * 3000 + b'"}', b'{"trial": 1, "candidate": 1e999999}',
    b'{"trial": -0, "candidate": 1}', b'{"trial": 1, "candidate": 1, "token": "x\u0000y"}',
]
MALFORMED_PATHS = ["/img/" + "9" * 23, "/img/" + "9" * 16, "/img/1e5", "/img/0x10", "/img/%00", "/img/%FF",
                   "/img/-0", "/img/1.0", "/img/\u0661", "/p/" + "a" * 5000, "/admin/" + "a" * 300,
                   "/static/../app.py", "/static/%2e%2e%2fapp.py", "/static/study.js%00", "/static/db.py",
                   "/api/next?t=" + "a" * 5000, "/img/1?t=" + "a" * 3000, "/api/admin?t=" + "b" * 200]


def test_malformed_requests_answer_400_404_or_413_never_500(world) -> None:
    path, _ = create_study(world)
    [token] = _participants(path, 1)
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        trial = http.get("/api/next", params={"t": token}).json()
        see(http, token, trial)
        for body in MALFORMED_BODIES:
            with_token = body.replace(b'"trial"', f'"token": "{token}", "trial"'.encode(), 1) \
                if b'"token"' not in body else body
            for sent in {body, with_token}:
                r = http.post("/api/vote", content=sent, headers={"Content-Type": "application/json"})
                assert r.status_code in (400, 413), (sent[:80], r.status_code, r.text[:200])
                assert len(r.json()["error"].splitlines()) == 1
        r = http.post("/api/vote", content=f'{{"token": "{token}", "trial": 1e400, "candidate": Infinity}}')
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        for url in MALFORMED_PATHS:
            r = http.get(url)
            assert r.status_code in (400, 404, 413), (url[:60], r.status_code, r.text[:200])
        r = http.get("/api/next", params={"t": token})
        assert r.status_code == 200 and r.json()["trial"] == trial["trial"]  # the server is fine
    assert _votes(path) == 0


# --- headers ---------------------------------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(world) -> None:
    import re

    path, admin = create_study(world)
    [token] = _participants(path, 1)
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        trial = http.get("/api/next", params={"t": token}).json()
        page = http.get(f"/p/{token}")
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text) and "<style" not in page.text
        assert "style=" not in page.text and not re.search(r"\son[a-z]+=", page.text)  # no inline handlers
        answers = [page, http.get("/"), http.get("/p/nope"), http.get("/api/next", params={"t": token}),
                   http.get("/api/next"), http.get(f"/img/{trial['candidates'][0]['image']}", params={"t": token}),
                   http.get("/img/abc"), http.get("/static/study.js"), http.get("/static/study.css"),
                   http.get("/nowhere"), http.put("/api/vote"), http.post("/api/vote", content=b"{"),
                   http.post("/api/vote", content=b"x" * 10_000), http.get(f"/admin/{admin}"),
                   http.get("/api/admin", params={"t": admin})]
        assert {r.status_code for r in answers} >= {200, 400, 401, 403, 404, 405, 413}
        for r in answers:
            csp = r.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp, r.url
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
        assert http.get("/static/study.js").headers["content-type"].startswith("text/javascript")


# --- hostile tokens and paths, failures, load ----------------------------------------------------------------


def test_hostile_requests_are_refused_and_nothing_is_recorded_twice(world) -> None:
    path, admin = create_study(world)
    conn = db.open_study(path)
    [(_, token), (_, other)] = db.add_participants(conn, 2)
    conn.close()
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/api/next").status_code == 401
        assert http.get("/api/next", params={"t": "nope"}).status_code == 403
        assert http.get(f"/p/{token}").status_code == 200 and "Candidates" in http.get(f"/p/{token}").text
        assert http.get("/p/nope").status_code == 403
        trial = http.get("/api/next", params={"t": token}).json()
        assert trial["instruction"].startswith("Select the best image") and len(trial["candidates"]) == 2
        see(http, token, trial)
        image = trial["candidates"][0]["image"]
        assert http.get(f"/img/{image}").status_code == 401
        assert http.get(f"/img/{image}", params={"t": "nope"}).status_code == 403
        ok = http.get(f"/img/{image}", params={"t": token})
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content[:4] == b"\x89PNG"
        for bad in ("/img/../../../etc/passwd", "/img/%2e%2e%2fetc%2fpasswd", "/img/-1", "/img/1.png",
                    "/img/etc/passwd", "/static/../record.json"):
            r = http.get(bad, params={"t": token})
            assert r.status_code == 404 and b"root:" not in r.content, bad
        assert http.get("/img/9999", params={"t": token}).status_code == 404
        vote = {"token": token, "trial": trial["trial"], "candidate": trial["candidates"][1]["id"]}
        assert http.post("/api/vote", content=b"{nope").status_code == 400
        assert http.post("/api/vote", json=[1, 2]).status_code == 400
        assert http.post("/api/vote", json={**vote, "token": None}).status_code == 401
        assert http.post("/api/vote", json={**vote, "token": "x"}).status_code == 403
        assert http.post("/api/vote", json={**vote, "candidate": 10**6}).status_code == 400
        assert http.post("/api/vote", json={**vote, "candidate": "1; DROP TABLE votes"}).status_code == 400
        for bad in (vote["candidate"] + 0.9, True, str(vote["candidate"]), None, [vote["candidate"]]):
            r = http.post("/api/vote", json={**vote, "candidate": bad})  # 1.9 is not 1, true is not 1
            assert r.status_code == 400 and "must be a JSON integer id" in r.json()["error"], bad
        assert http.post("/api/vote", json={**vote, "trial": True}).status_code == 400
        assert http.post("/api/vote", json={**vote, "token": other}).status_code == 403  # not assigned to other
        first = http.post("/api/vote", json=vote)
        assert first.status_code == 200 and first.json()["progress"]["done"] == 1
        replay = http.post("/api/vote", json=vote)
        assert replay.status_code == 409 and "already voted" in replay.json()["error"]
        assert http.get("/api/admin", params={"t": token}).status_code == 403  # a participant is not the admin
        summary = http.get("/api/admin", params={"t": admin}).json()
        assert summary["votes"] == 1 and {m["method"]: m["votes"] for m in summary["methods"]}[_chosen(path)] == 1
        assert http.get(f"/admin/{admin}").status_code == 200 and http.get("/admin/wrong").status_code == 403
    conn = db.open_study(path)
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1
    conn.close()


def _chosen(path: Path) -> str:
    conn = db.open_study(path)
    method = trials.votes(conn)[0]["method"]
    conn.close()
    return method


def test_a_changed_image_is_refused_by_server_and_cli(world, monkeypatch, capsys) -> None:
    results, _ = world
    path, _ = create_study(world)
    conn = db.open_study(path)
    [(_, token)] = db.add_participants(conn, 1)
    row = conn.execute("SELECT id, path FROM images WHERE path LIKE '%.png' ORDER BY id LIMIT 1").fetchone()
    conn.close()
    from PIL import Image

    Image.new("RGB", (16, 16), (0, 255, 0)).save(row["path"])  # e.g. a forced re-run wrote a new sample
    code, _, err = bench(monkeypatch, capsys, "study", "serve", "--results", results, "--port", "1")
    assert code == 2 and "1 image(s) of study 's1' differ" in err and "(changed)" in err
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get(f"/img/{row['id']}", params={"t": token})
        assert r.status_code == 409 and "changed since the study was created" in r.text


def test_a_stopped_server_loses_no_vote_and_records_none_twice(world) -> None:
    path, _ = create_study(world)
    conn = db.open_study(path)
    [(_, token)] = db.add_participants(conn, 1)
    conn.close()
    server = StudyServer(path).start()
    with httpx.Client(base_url=server.url, timeout=5) as http:
        trial = http.get("/api/next", params={"t": token}).json()
    server.stop()
    vote = {"token": token, "trial": trial["trial"], "candidate": trial["candidates"][0]["id"]}
    with httpx.Client(base_url=server.url, timeout=5) as http, pytest.raises(httpx.TransportError):
        http.post("/api/vote", json=vote)
    with StudyServer(path, port=server.port), httpx.Client(base_url=server.url, timeout=5) as http:
        again = http.get("/api/next", params={"t": token}).json()
        assert again["trial"] == trial["trial"]  # the open trial survived the restart
        assert again["candidates"] == trial["candidates"]  # in the same order
        see(http, token, again)
        assert http.post("/api/vote", json=vote).status_code == 200
        assert http.post("/api/vote", json=vote).status_code == 409
    conn = db.open_study(path)
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1
    conn.close()


def test_twenty_participants_at_once(world, capsys) -> None:
    """20 simulated participants vote concurrently until nothing is left for them (bounded loop): every vote is
    recorded exactly once, none is lost, and no trial gets more than its per_trial quota."""
    path, _ = create_study(world, per_trial=15)
    conn = db.open_study(path)
    tokens = [t for _, t in db.add_participants(conn, 20)]
    conn.close()
    accepted: list[tuple[str, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def participant(token: str, http: httpx.Client) -> None:
        barrier.wait()
        for _ in range(12):  # bounded: at most 8 trials each
            r = http.get("/api/next", params={"t": token})
            if r.status_code != 200:
                errors.append(f"next {r.status_code}")
                return
            trial = r.json()
            if trial["done"]:
                return
            for c in trial["candidates"]:
                if http.get(f"/img/{c['image']}", params={"t": token}).status_code != 200:
                    errors.append("image not served")
            vote = {"token": token, "trial": trial["trial"], "candidate": trial["candidates"][0]["id"]}
            r = http.post("/api/vote", json=vote)
            if r.status_code == 200:
                with lock:
                    accepted.append((token, trial["trial"]))
                if http.post("/api/vote", json=vote).status_code != 409:  # the replay must be refused
                    errors.append("replay accepted")
            elif r.status_code != 409 or r.json().get("reason") != "trial_full":  # filled up meanwhile
                errors.append(f"vote {r.status_code} {r.text}")

    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=30,
                                                   limits=httpx.Limits(max_connections=40)) as http:
        threads = [threading.Thread(target=participant, args=(t, http)) for t in tokens]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.perf_counter() - start
    assert not errors, errors[:5]
    conn = db.open_study(path)
    rows = conn.execute("SELECT participant_id, trial_id FROM votes").fetchall()
    per_trial = dict(conn.execute("SELECT trial_id, COUNT(*) FROM votes GROUP BY trial_id").fetchall())
    conn.close()
    assert len(rows) == len(accepted) == 8 * 15  # every trial filled to its quota, none lost
    assert len(set(map(tuple, rows))) == len(rows)  # one vote per (participant, trial)
    assert set(per_trial.values()) == {15}  # no trial over-assigned
    with capsys.disabled():
        print(f"\n[study concurrency] 20 participants, {len(rows)} votes recorded once each in {elapsed:.2f} s: "
              f"{len(rows) / elapsed:.1f} votes/s (each with a GET /api/next, its 2 candidate images and a refused "
              f"replay)")




def test_serve_refuses_a_taken_port_and_a_bad_host(world, monkeypatch, capsys) -> None:
    import socket

    results, _ = world
    create_study(world)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = bench(monkeypatch, capsys, "study", "serve", "--results", results, "--port", port)
        assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "pass another --port" in err
    code, _, err = bench(monkeypatch, capsys, "study", "serve", "--results", results, "--host", "my-laptop")
    assert code == 2 and "--host 'my-laptop' is not an IP address" in err
    code, _, err = bench(monkeypatch, capsys, "study", "serve", "--results", results, "--port", "70000")
    assert code == 2 and "--port must be between 1 and 65535" in err
    code, _, err = bench(monkeypatch, capsys, "study", "invite", "--results", results)
    assert code == 2 and "nothing to do" in err


# --- administration ----------------------------------------------------------------------------------------


def test_revoke_stops_a_link_keeps_its_votes_marked_and_exclude_leaves_them_out(world, monkeypatch, capsys) -> None:
    import csv
    import io

    results, _ = world
    path, _ = create_study(world)
    vote_all(path, {0: 10, 1: 0, 2: 5})  # p01 always EchoDistill, p02 never
    [token] = _participants(path, 1)  # p04
    code, out, err = bench(monkeypatch, capsys, "study", "revoke", "p01", "p04", "--results", results)
    assert code == 0, err
    assert "revoked p01, p04: their links stop working now" in out and "their 8 vote(s) stay" in out
    assert "already revoked: p01" in bench(monkeypatch, capsys, "study", "revoke", "p01", "--results", results)[1]
    with StudyServer(path) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get("/api/next", params={"t": token})
        assert r.status_code == 403 and r.json()["reason"] == "revoked" and "revoked" in r.json()["error"]
        assert http.get(f"/p/{token}").status_code == 403
    votes = list(csv.DictReader(io.StringIO(bench(monkeypatch, capsys, "study", "export", "--results", results)[1])))
    assert len(votes) == 24 and {v["participant"] for v in votes if v["revoked"] == "1"} == {"p01"}
    kept = list(csv.DictReader(io.StringIO(bench(monkeypatch, capsys, "study", "export", "--results", results,
                                                 "--exclude", "p01")[1])))
    assert len(kept) == 16 and "p01" not in {v["participant"] for v in kept}
    code, table, _ = bench(monkeypatch, capsys, "table", "study", "--results", results)
    assert "24 annotations from 3 participants" in table
    assert "Revoked links whose earlier votes are counted: p01" in table
    code, table, _ = bench(monkeypatch, capsys, "table", "study", "--results", results, "--exclude", "p01,p02")
    assert code == 0 and "8 annotations from 1 participant" in table
    assert "Left out (--exclude): the votes of p01, p02" in table
    code, csv_text, _ = bench(monkeypatch, capsys, "table", "study", "--results", results, "--exclude", "p01",
                              "--format", "csv")
    assert {r["excluded"] for r in csv.DictReader(io.StringIO(csv_text))} == {"p01"}
    for args in (("table", "study", "--exclude", "p99"), ("study", "export", "--exclude", "p1"),
                 ("study", "revoke", "p99")):
        code, _, err = bench(monkeypatch, capsys, *args, "--results", results)
        assert code == 2 and "'p" in err and "p01, p02, p03, p04" in err and len(err.strip().splitlines()) == 1
    assert _votes(path) == 24


def test_links_name_the_port_serve_uses_and_invite_is_bounded(world, monkeypatch, capsys) -> None:
    from bench.study.commands import serve_address

    results, data = world
    code, out, err = bench(monkeypatch, capsys, "study", "create", "--name", "t7", "--results", results, "--data",
                           data, "--port", "8765")
    assert code == 0, err
    assert "http://127.0.0.1:8765/admin/" in out and "links name port 8765" in out
    path = results / "tiny" / "_studies" / "t7.sqlite"
    assert serve_address(path, None, None) == ("127.0.0.1", 8765, "")
    code, out, err = bench(monkeypatch, capsys, "study", "invite", "--participants", "2", "--results", results)
    assert code == 0 and all("\thttp://127.0.0.1:8765/p/" in line for line in out.strip().splitlines())
    assert "`bench study serve` listens on port 8765" in err
    code, out, err = bench(monkeypatch, capsys, "study", "invite", "--participants", "1", "--results", results,
                           "--port", "9001")
    assert code == 0 and "http://127.0.0.1:9001/p/" in out
    assert "links printed before name http://127.0.0.1:8765" in err
    assert serve_address(path, None, None)[:2] == ("127.0.0.1", 9001)
    assert "links name port 9001, not 8000" in serve_address(path, None, 8000)[2]
    for n, message in (("501", "--participants must be between 1 and 500 per invite, got 501"),
                       ("-3", "--participants must be between 1 and 500"), ("0", "nothing to do")):
        code, _, err = bench(monkeypatch, capsys, "study", "invite", "--participants", n, "--results", results)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    conn = db.open_study(path)
    assert len(db.participant_labels(conn)) == 3  # nothing added by a refused invite
    conn.close()


def test_a_study_of_the_first_schema_opens_with_its_votes(world, monkeypatch, capsys) -> None:
    import csv
    import io

    results, _ = world
    path, _ = create_study(world)
    vote_all(path, {0: 10})
    conn = sqlite3.connect(path)  # what a study written before deliveries, orders and revocation looked like
    conn.executescript("DROP TABLE deliveries; ALTER TABLE participants DROP COLUMN revoked_at; "
                       "ALTER TABLE votes DROP COLUMN shown_order; UPDATE meta SET value = '1' "
                       "WHERE key = 'schema_version'; DELETE FROM meta WHERE key = 'address';")
    conn.close()
    code, out, err = bench(monkeypatch, capsys, "study", "export", "--results", results)
    assert code == 0, err
    votes = list(csv.DictReader(io.StringIO(out)))
    assert len(votes) == 8 and all(v["shown_order"].split(";")[int(v["shown_position"]) - 1] ==
                                   f"{v['method']}/default" for v in votes)
    conn = db.open_study(path)
    assert db.meta(conn, "schema_version") == db.SCHEMA_VERSION and db.address(conn)["port"] == 8000
    conn.close()
