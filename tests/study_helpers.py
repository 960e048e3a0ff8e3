"""Fabricated finished runs (records plus real PNGs, no training) and a study server on loopback, for the study
tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from bench.study.config import PAPER_METHODS
from tests.golden.make_records import record
from tests.helpers import tiny_dataset

COLOURS = {"echodistill": (200, 40, 40), "custom_diffusion": (40, 40, 200), "cones2": (200, 160, 40),
           "disenbooth": (140, 40, 160), "lora": (40, 160, 40)}


def make_runs(results: Path, methods: tuple[str, ...] = PAPER_METHODS,
              concepts: tuple[str, ...] = ("dog", "teapot"), seeds: tuple[int, ...] = (0,)) -> None:
    """Finished runs under `results/tiny/<method>/default/<concept>/seed<k>/`: the golden fixture's record with
    its 4 images (2 prompts x 2 eval seeds) written as small PNGs, one colour per method."""
    from PIL import Image

    for method in methods:
        for concept in concepts:
            for seed in seeds:
                rec = record(method, "default", "tiny", concept, seed, "done", 1.0)
                run = results / "tiny" / method / "default" / concept / f"seed{seed}"
                (run / "images").mkdir(parents=True)
                for i, row in enumerate(rec["images"]):
                    shade = COLOURS.get(method, (90, 90, 90))
                    Image.new("RGB", (16, 16), tuple(min(255, c + 10 * i) for c in shade)).save(run / row["file"])
                (run / "record.json").write_text(json.dumps(rec))


def see(http, token: str, trial: dict) -> None:
    """Fetch every candidate image of `trial` as participant `token` (what a browser showing it does)."""
    for c in trial["candidates"]:
        r = http.get(f"/img/{c['image']}", params={"t": token})
        assert r.status_code == 200, r.text


def see_in_db(conn, pid: int, trial: dict) -> None:
    """Record every candidate image of `trial` as delivered to participant `pid` (as the server does on sending)."""
    from bench.study import trials

    for c in trial["candidates"]:
        trials.deliver(conn, pid, c["image"])


def make_dataset(root: Path) -> Path:
    """A DreamBench-shaped dataset with dog, teapot and red_cartoon (one photo each)."""
    return tiny_dataset(root)


class StudyServer:
    """The study app under uvicorn in a thread, on 127.0.0.1 (a fixed port, so it can stop and start again)."""

    def __init__(self, db_path: Path, port: int | None = None) -> None:
        self.db_path = db_path
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self) -> StudyServer:
        import uvicorn

        from bench.study.app import create_app

        config = uvicorn.Config(create_app(self.db_path), host="127.0.0.1", port=self.port, log_level="error",
                                limit_concurrency=200, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("study server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=20)
            self.server = None

    def __enter__(self) -> StudyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_study(world: tuple[Path, Path], name: str = "s1", per_trial: int | None = None, trials: int | None = None,
                 methods: tuple[str, ...] = ("echodistill", "custom_diffusion")) -> tuple[Path, str]:
    """A study of `methods` over the runs in `world` (results, data), written directly; returns (path, admin token)."""
    from bench.data import load_concepts
    from bench.study import db
    from bench.study.commands import study_path
    from bench.study.config import StudyConfig
    from bench.study.draw import draw_trials

    results, data = world
    cfg = StudyConfig(name, "tiny", methods, ("default",) * len(methods), (), (0,), trials, 0, per_trial)
    path = study_path(results, "tiny", name)
    admin = db.create_database(path, cfg, draw_trials(results, cfg, {c.name: c for c in load_concepts(data)}))
    return path, admin


def vote_all(path: Path, choices: dict[int, int]) -> None:
    """Participant k votes on every trial: for EchoDistill on `choices[k]` trials in 10, else for another method."""
    from bench.study import db, trials

    conn = db.open_study(path)
    others = [m for m in db.study_config(conn).methods if m != "echodistill"]
    people = db.add_participants(conn, len(choices))
    for k, (label, _) in enumerate(people):
        pid = conn.execute("SELECT id FROM participants WHERE label = ?", (label,)).fetchone()[0]
        for _ in range(20):
            t = trials.next_trial(conn, pid)
            if t is None:
                break
            see_in_db(conn, pid, t)
            rows = conn.execute("SELECT id, method FROM candidates WHERE trial_id = ?", (t["trial"],)).fetchall()
            wanted = "echodistill" if (t["trial"] + k) % 10 < choices[k] else others[(t["trial"] + k) % len(others)]
            trials.vote(conn, pid, t["trial"], next(r["id"] for r in rows if r["method"] == wanted))
    conn.close()
