"""The study page in a real headless Chromium (driven by Playwright against the system browser): an image that
fails keeps the vote closed until a retry, vote by click and by key, resume in the same order, a server stopped
mid-vote, a trial filled by others meanwhile, the 2 x 2 grid at phone width, the admin page; then the database and
Table 7."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bench.study import db, trials
from tests.helpers import bench
from tests.study_helpers import StudyServer, make_dataset, make_runs

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the study page is not checked in a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)  # a fresh profile per launch
        yield b
        b.close()


def _ready(page) -> None:
    """Wait until the trial's candidates can be chosen (every image loaded)."""
    page.wait_for_function("() => document.querySelectorAll('.cand').length > 0 && "
                           "[...document.querySelectorAll('.cand')].every(b => !b.disabled)")


def _progress(page, text: str) -> None:
    page.wait_for_function(f"() => document.getElementById('progress').textContent === {text!r}")


def _count_votes(path: Path) -> int:
    conn = db.open_study(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    finally:
        conn.close()


def test_study_in_a_browser(tmp_path: Path, browser, monkeypatch, capsys) -> None:
    results, data = tmp_path / "results", make_dataset(tmp_path / "data")
    make_runs(results)  # the paper's four methods
    assert bench(monkeypatch, capsys, "study", "create", "--name", "t7", "--results", results, "--data", data,
                 "--per-trial", "2")[0] == 0
    path = results / "tiny" / "_studies" / "t7.sqlite"
    server = StudyServer(path)
    code, out, err = bench(monkeypatch, capsys, "study", "invite", "--participants", "3", "--admin", "--results",
                           results, "--port", str(server.port))
    assert code == 0, err
    links = dict(line.split("\t") for line in out.strip().splitlines())
    assert set(links) == {"p01", "p02", "p03", "admin"} and links["p01"].startswith(f"http://127.0.0.1:{server.port}/p/")
    conn = db.open_study(path)
    candidate_images = {r[0] for r in conn.execute("SELECT image_id FROM candidates")}
    conn.close()
    failed: list[str] = []

    def fail_first_candidate(route) -> None:  # the network loses the first candidate image once
        image = int(route.request.url.split("/img/")[1].split("?")[0])
        if not failed and image in candidate_images:
            failed.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    server.start()
    try:
        page = browser.new_page()
        page.set_default_timeout(15000)
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        page.route("**/img/**", fail_first_candidate)
        page.goto(links["p01"])
        page.wait_for_function("() => document.getElementById('status').textContent.includes('could not be loaded')")
        assert failed and page.is_visible("#retry") and page.locator(".cand").count() == 4
        assert page.locator(".cand:disabled").count() == 4  # nothing can be chosen on a blank box
        page.keyboard.press("1")
        page.locator(".cand").first.click(force=True)
        assert _count_votes(path) == 0
        page.click("#retry")  # the retry succeeds: voting opens
        _ready(page)
        assert page.inner_text("#status") == "" and not page.is_visible("#retry")
        assert page.inner_text("#instruction").startswith("Select the best image from each group")
        assert page.inner_text("#progress") == "Progress: 0 of 8 done"
        prompt = page.inner_text("#prompt")
        assert prompt and "<new1>" not in prompt and page.locator("#refs img").count() == 1
        page.locator(".cand").first.click()  # vote by click: recorded once
        _progress(page, "Progress: 1 of 8 done")
        assert _count_votes(path) == 1
        _ready(page)
        page.keyboard.press("2")  # vote by key
        _progress(page, "Progress: 2 of 8 done")
        _ready(page)
        shown = page.inner_text("#prompt")
        order = page.eval_on_selector_all(".cand", "bs => bs.map(b => b.dataset.candidate)")
        page.close()

        page = browser.new_page()  # resume: the same open trial, in the same order, progress kept
        page.goto(links["p01"])
        _ready(page)
        assert page.inner_text("#progress") == "Progress: 2 of 8 done" and page.inner_text("#prompt") == shown
        assert page.eval_on_selector_all(".cand", "bs => bs.map(b => b.dataset.candidate)") == order

        server.stop()  # the server goes away before the vote reaches it
        page.locator(".cand").nth(1).click()
        page.wait_for_function("() => document.getElementById('status').textContent.includes('could not be reached')")
        assert page.is_visible("#retry")
        server.start()
        page.click("#retry")
        _progress(page, "Progress: 3 of 8 done")
        _ready(page)
        assert page.inner_text("#status") == ""

        # two others fill p01's open trial (--per-trial 2) while p01 looks at it: p01's choice is refused and
        # said so, the next trial loads, and the total that shrank is explained
        conn = db.open_study(path)
        held = conn.execute("SELECT trial_id FROM assignments WHERE participant_id = 1").fetchone()[0]
        for pid in (2, 3):
            conn.execute("INSERT INTO assignments VALUES (?, ?, 0)", (pid, held))
            rows = conn.execute("SELECT id, image_id FROM candidates WHERE trial_id = ?", (held,)).fetchall()
            for r in rows:
                trials.deliver(conn, pid, r["image_id"])
            trials.vote(conn, pid, held, rows[0]["id"])
        conn.execute("UPDATE trials SET prompt = prompt || ' ' || ?", ("x" * 150,))  # a long unbroken word
        conn.close()
        page.keyboard.press("3")
        page.wait_for_function("() => document.getElementById('note').textContent.includes('was not counted')")
        note = page.inner_text("#note")
        assert "1 trial got all the votes needed from other participants" in note and "total is now 7" in note
        _progress(page, "Progress: 3 of 7 done")
        _ready(page)
        assert page.eval_on_selector("#prompt", "e => e.textContent") != shown
        assert _count_votes(path) == 5 and not blocked, blocked

        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(links["p03"])
        _ready(phone)
        boxes = [phone.locator(".cand").nth(k).bounding_box() for k in range(4)]
        assert len({round(b["y"]) for b in boxes}) == 2 and len({round(b["x"]) for b in boxes}) == 2  # 2 x 2
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= 390 and b["width"] > 150 for b in boxes)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # the long word wraps
        phone.screenshot(path=str(tmp_path / "study-390.png"), full_page=True)
        if os.environ.get("STUDY_SCREENSHOT"):
            phone.screenshot(path=os.environ["STUDY_SCREENSHOT"], full_page=True)

        admin = browser.new_page()
        response = admin.goto(links["admin"])
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "5 votes on 8 trials from 3 participants" in admin.inner_text("#summary")
        cells = admin.locator("#participants tr").all_inner_texts()
        assert any(re.match(r"p01\s+3\s+7", c) for c in cells) and any(re.match(r"p02\s+1\s+", c) for c in cells)
        bad = browser.new_page()
        response = bad.goto(links["p01"].rsplit("/", 1)[0] + "/not-a-token")
        assert response.status == 403 and "unknown participant token" in bad.inner_text("body")
    finally:
        server.stop()

    conn = db.open_study(path)
    votes = trials.votes(conn)
    conn.close()
    mine = [v for v in votes if v["participant"] == "p01"]
    assert len(mine) == 3 and len({v["trial"] for v in mine}) == 3
    code, table, _ = bench(monkeypatch, capsys, "table", "study", "--results", results)
    assert "5 annotations from 3 participants on 8 trials" in table and "chance level 25%" in table
