"""The study page in a real headless Chromium (driven by Playwright against the system browser): invite, vote by
click and by key, resume, a server stopped mid-vote, the admin page; then the database and Table 7."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bench.study import db
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


def test_study_in_a_browser(tmp_path: Path, browser, monkeypatch, capsys) -> None:
    results, data = tmp_path / "results", make_dataset(tmp_path / "data")
    make_runs(results)
    assert bench(monkeypatch, capsys, "study", "create", "--name", "t7", "--results", results, "--data", data)[0] == 0
    path = results / "tiny" / "_studies" / "t7.sqlite"
    server = StudyServer(path)
    code, out, err = bench(monkeypatch, capsys, "study", "invite", "--participants", "2", "--admin", "--results",
                           results, "--port", str(server.port))
    assert code == 0, err
    links = dict(line.split("\t") for line in out.strip().splitlines())
    assert set(links) == {"p01", "p02", "admin"} and links["p01"].startswith(f"http://127.0.0.1:{server.port}/p/")
    server.start()
    try:
        page = browser.new_page()
        page.set_default_timeout(15000)
        page.goto(links["p01"])
        page.wait_for_selector(".cand img")
        assert page.inner_text("#instruction").startswith("Select the best image from each group")
        assert page.inner_text("#progress") == "Progress: 0 of 8 done"
        prompt = page.inner_text("#prompt")
        assert prompt and "<new1>" not in prompt
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#refs img").count() == 1 and page.locator(".cand").count() == 2

        page.locator(".cand").first.click()  # vote by click
        page.wait_for_function("document.getElementById('progress').textContent.includes('1 of 8')")
        page.keyboard.press("2")  # vote by key
        page.wait_for_function("document.getElementById('progress').textContent.includes('2 of 8')")
        shown = page.inner_text("#prompt")
        page.close()

        page = browser.new_page()  # resume: the same open trial, progress kept
        page.goto(links["p01"])
        page.wait_for_selector(".cand img")
        assert page.inner_text("#progress") == "Progress: 2 of 8 done" and page.inner_text("#prompt") == shown

        server.stop()  # the server goes away before the vote reaches it
        page.locator(".cand").nth(1).click()
        page.wait_for_function("document.getElementById('status').textContent.includes('could not be reached')")
        assert page.is_visible("#retry")
        server.start()
        page.click("#retry")
        page.wait_for_function("document.getElementById('progress').textContent.includes('3 of 8')")
        assert page.inner_text("#status") == ""

        admin = browser.new_page()
        admin.goto(links["admin"])
        assert "3 votes on 8 trials from 2 participants" in admin.inner_text("#summary")
        cells = admin.locator("#participants tr").all_inner_texts()
        assert any(re.match(r"p01\s+3\s+8", c) for c in cells) and any(re.match(r"p02\s+0\s+8", c) for c in cells)
        bad = browser.new_page()
        response = bad.goto(links["p01"].rsplit("/", 1)[0] + "/not-a-token")
        assert response.status == 403 and "unknown participant token" in bad.inner_text("body")
    finally:
        server.stop()

    conn = db.open_study(path)
    votes = db.votes(conn)
    conn.close()
    assert len(votes) == 3 and len({v["trial"] for v in votes}) == 3 and {v["participant"] for v in votes} == {"p01"}
    code, table, _ = bench(monkeypatch, capsys, "table", "study", "--results", results)
    assert "3 annotations from 1 participant on 8 trials" in table
