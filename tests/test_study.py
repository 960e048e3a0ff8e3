"""The preference study (Table 7): drawing trials, the database's rules, the web app under hostile input and
concurrency (a real uvicorn server on 127.0.0.1), the table and the export. Offline, seconds."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest

from bench.api import BenchError
from bench.study import db, trials
from bench.study.config import StudyConfig
from tests.helpers import bench
from tests.study_helpers import create_study, make_dataset, see_in_db, vote_all

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


def _trials(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT t.concept, t.prompt_index, t.eval_seed, t.prompt, c.position, c.method, i.path "
                        "FROM trials t JOIN candidates c ON c.trial_id = t.id JOIN images i ON i.id = c.image_id "
                        "ORDER BY t.id, c.position").fetchall()
    conn.close()
    return rows


# --- create ----------------------------------------------------------------------------------------------------


def test_draw_reads_records_of_an_older_bench(tmp_path: Path) -> None:
    """The golden records (written before `trains` and `eval_version`): every image on disk is a candidate, a
    missing file or an image row without one is left out, the identifier is replaced by the class noun."""
    import json
    import shutil

    from PIL import Image

    from bench.data import load_concepts
    from bench.study.draw import draw_trials

    golden, results = Path(__file__).parent / "golden" / "records", tmp_path / "results"
    for method in ("echodistill", "custom_diffusion"):
        shutil.copytree(golden / "tiny" / method / "default", results / "tiny" / method / "default")
    for path in results.rglob("record.json"):
        assert "trains" not in json.loads(path.read_text())
        for image in json.loads(path.read_text())["images"]:
            (path.parent / image["file"]).parent.mkdir(exist_ok=True)
            Image.new("RGB", (8, 8)).save(path.parent / image["file"])
    dog = results / "tiny/custom_diffusion/default/dog/seed0"
    (dog / "images/p01_s1.png").unlink()
    teapot = results / "tiny/echodistill/default/teapot/seed0/record.json"
    data = json.loads(teapot.read_text())
    del data["images"][0]["file"]
    teapot.write_text(json.dumps(data))
    concepts = {c.name: c for c in load_concepts(make_dataset(tmp_path / "data"))}
    cfg = StudyConfig("old", "tiny", ("echodistill", "custom_diffusion"), ("default", "default"), (), (0,),
                      None, 0, None)
    trials = draw_trials(results, cfg, concepts)
    assert sorted((t["concept"], t["prompt_index"], t["eval_seed"]) for t in trials) == [
        ("dog", 0, 0), ("dog", 0, 1), ("dog", 1, 0), ("teapot", 0, 1), ("teapot", 1, 0), ("teapot", 1, 1)]
    assert all(t["seed"] == 0 and "<new1>" not in t["prompt"] and len(t["candidates"]) == 2 for t in trials)



def test_create_draws_every_trial_with_hashes_and_references(world, monkeypatch, capsys) -> None:
    results, data = world
    code, out, err = bench(monkeypatch, capsys, "study", "create", "--name", "t7", "--results", results, "--data",
                           data)
    assert code == 0, err
    assert "8 trials, 4 candidates per trial (chance 25%), 32 generated images" in out and "admin link" in out
    admin = out.split("http://127.0.0.1:8000/admin/")[1].split()[0]
    path = results / "tiny" / "_studies" / "t7.sqlite"
    rows = _trials(path)
    assert len(rows) == 32  # 2 concepts x 2 prompts x 2 eval seeds, 4 candidates each (the paper's four methods)
    for concept, p, s, prompt, _, method, image in rows:
        assert "<new1>" not in prompt and (concept in prompt)  # identifier replaced by the class noun
        assert Path(image).is_file()
        assert f"/{method}/default/{concept}/seed0/images/p{p:02d}_s{s}.png" in image
    orders = [r[5] for r in rows if r[4] == 0]
    assert len(set(orders)) > 1  # the first candidate is not always one method
    conn = db.open_study(path)
    assert db.meta(conn, "schema_version") == db.SCHEMA_VERSION
    assert db.study_config(conn).methods == ("echodistill", "custom_diffusion", "cones2", "disenbooth")
    assert db.study_config(conn).extra == {"data": str(data.resolve()), "results": str(results.resolve())}
    refs = conn.execute("SELECT DISTINCT i.path FROM refs r JOIN images i ON i.id = r.image_id").fetchall()
    assert sorted(Path(r[0]).parent.name for r in refs) == ["dog", "teapot"]
    assert db.changed_images(conn) == []
    db.check_admin(conn, admin)  # the printed admin token is the one stored (as a hash)
    with pytest.raises(db.Refused):
        db.check_admin(conn, admin + "x")
    conn.close()

    # the same draw under another name gives the same trials and orders; --trials N draws a subset
    code = bench(monkeypatch, capsys, "study", "create", "--name", "again", "--results", results, "--data", data)[0]
    assert code == 0
    assert [r[:6] for r in _trials(results / "tiny" / "_studies" / "again.sqlite")] == [r[:6] for r in rows]
    assert bench(monkeypatch, capsys, "study", "create", "--name", "three", "--results", results, "--data", data,
                 "--trials", "3")[0] == 0
    assert len(_trials(results / "tiny" / "_studies" / "three.sqlite")) == 12


@pytest.mark.parametrize("args, message", [
    (("--name", "t7"), "already exists"),
    (("--name", "x", "--trials", "99"), "--trials 99 is more than the 8 eligible trials"),
    (("--name", "x", "--trials", "some"), "--trials must be a positive number"),
    (("--name", "x", "--methods", "echodistill,lora"), "no trial can be drawn.*lacks lora/default"),
    (("--name", "x", "--methods", "echodistill"), "at least 2 methods"),
    (("--name", "x", "--methods", "echodistil,lora"), "unknown method 'echodistil'.*did you mean"),
    (("--name", "../evil"), "study name '../evil' is not valid"),
    (("--name", "x", "--variant", "a,b,c"), "3 variants for 4 methods"),
    (("--name", "x", "--dataset", "imagenet"), "unknown dataset 'imagenet'"),
    (("--name", "x", "--concepts", "dgo"), "unknown concept 'dgo'.*did you mean 'dog'"),
    (("--name", "x", "--concepts", "red_cartoon"), "no trial can be drawn.*red_cartoon/seed0 lacks echodistill"),
])
def test_create_refuses_bad_input_in_one_line(world, monkeypatch, capsys, args, message) -> None:
    import re

    results, data = world
    assert bench(monkeypatch, capsys, "study", "create", "--name", "t7", "--results", results, "--data", data)[0] == 0
    code, _, err = bench(monkeypatch, capsys, "study", "create", "--results", results, "--data", data, *args)
    assert code == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (results / "tiny" / "_studies").iterdir()) == ["t7.sqlite"]  # nothing half-made


# --- the database's rules ----------------------------------------------------------------------------------------


def test_assignment_is_balanced_resumable_and_never_repeats(world) -> None:
    path, _ = create_study(world, per_trial=2)
    conn = db.open_study(path)
    (a, _), (b, _), (c, _) = db.add_participants(conn, 3)
    ids = {label: row["id"] for label, row in ((p, conn.execute("SELECT id FROM participants WHERE label = ?",
                                                                 (p,)).fetchone()) for p in (a, b, c))}
    first = trials.next_trial(conn, ids[a])
    assert trials.next_trial(conn, ids[a])["trial"] == first["trial"]  # resumed, not a new one
    second = trials.next_trial(conn, ids[b])
    assert second["trial"] != first["trial"]  # fewest votes and holds first: b gets another trial
    see_in_db(conn, ids[a], first)
    see_in_db(conn, ids[a], second)  # not b's delivery: a does not hold that trial
    assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 2
    with pytest.raises(db.Refused) as err:
        trials.vote(conn, ids[a], second["trial"], second["candidates"][0]["id"])
    assert err.value.status == 403  # not assigned to a
    with pytest.raises(db.Refused) as err:
        trials.vote(conn, ids[a], first["trial"], second["candidates"][0]["id"])
    assert err.value.status == 400  # a candidate of another trial
    trials.vote(conn, ids[a], first["trial"], first["candidates"][1]["id"])
    with pytest.raises(db.Refused) as err:
        trials.vote(conn, ids[a], first["trial"], first["candidates"][0]["id"])
    assert err.value.status == 409 and err.value.reason == "already_voted"  # a replay, even with another choice
    seen = [first["trial"]]
    for _ in range(20):  # bounded: 8 trials
        t = trials.next_trial(conn, ids[a])
        if t is None:
            break
        seen.append(t["trial"])
        see_in_db(conn, ids[a], t)
        trials.vote(conn, ids[a], t["trial"], t["candidates"][0]["id"])
    assert sorted(seen) == list(range(1, 9))  # every trial once, never twice
    assert trials.progress(conn, ids[a]) == {"done": 8, "total": 8}
    # c finishes what is left: each trial then has at most per_trial = 2 votes
    for _ in range(20):
        t = trials.next_trial(conn, ids[c])
        if t is None:
            break
        see_in_db(conn, ids[c], t)
        trials.vote(conn, ids[c], t["trial"], t["candidates"][0]["id"])
    counts = [r[0] for r in conn.execute("SELECT COUNT(*) FROM votes GROUP BY trial_id")]
    assert max(counts) <= 2 and sum(counts) == 8 + 7  # b still holds one trial, so c could take 7
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 15
    conn.close()


def test_open_study_refuses_foreign_and_newer_files(tmp_path: Path, world) -> None:
    with pytest.raises(BenchError, match="no study database"):
        db.open_study(tmp_path / "none.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(BenchError, match="is not a study database"):
        db.open_study(junk)
    path, _ = create_study(world)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(BenchError, match="schema 99, newer"):
        db.open_study(path)


# --- table and export --------------------------------------------------------------------------------------------


def test_table_of_the_paper_design_is_beside_the_paper(world, monkeypatch, capsys) -> None:
    """A study created with the defaults (the paper's four methods) renders best of 4, chance 25%, every method
    by its declared label, beside the paper's shares; the export names images relative to the results folder
    and records the order each participant saw."""
    results, data = world
    assert bench(monkeypatch, capsys, "study", "create", "--name", "t7", "--results", results, "--data", data)[0] == 0
    path = results / "tiny" / "_studies" / "t7.sqlite"
    code, out, _ = bench(monkeypatch, capsys, "table", "study", "--results", results)
    assert code == 0 and "No votes yet" in out and "| EchoDistill | 0 |" in out
    vote_all(path, {0: 10, 1: 7, 2: 6})  # 3 participants x 8 trials
    code, out, err = bench(monkeypatch, capsys, "table", "study", "--results", results)
    assert code == 0, err
    assert "Best of 4: 4 candidates per trial, one per method (chance level 25%)" in out
    assert "24 annotations from 3 participants on 8 trials" in out and "Paper: 15 participants, 840" in out
    assert "| Method | Votes | Preference (%) | 95% interval | Paper (%) |" in out
    assert "Same design as the paper's study" in out and "not in this harness" not in out
    for label, paper in (("EchoDistill", "66.90"), ("Custom Diffusion", "32.26"), ("Cones 2", "0.48"),
                         ("DisenBooth", "0.36")):
        line = next(line for line in out.splitlines() if line.startswith(f"| {label} |"))
        assert line.endswith(f"| {paper} |"), line
    code, csv_text, _ = bench(monkeypatch, capsys, "table", "study", "--results", results, "--format", "csv")
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert set(rows) == {"EchoDistill", "Custom Diffusion", "Cones 2", "DisenBooth"}
    assert sum(int(r["votes"]) for r in rows.values()) == 24
    ed = rows["EchoDistill"]
    expected = sum((t + k) % 10 < c for k, c in enumerate((10, 7, 6)) for t in range(1, 9))  # as _vote_all chose
    assert int(ed["votes"]) == expected == 17
    assert float(ed["preference_pct"]) == pytest.approx(100 * 17 / 24)
    assert float(ed["ci_low_pct"]) < float(ed["preference_pct"]) < float(ed["ci_high_pct"])
    assert float(ed["paper_preference_pct"]) == 66.90 and ed["candidates_per_trial"] == "4"
    assert float(ed["chance_pct"]) == 25.0
    code, out, _ = bench(monkeypatch, capsys, "study", "export", "--results", results)
    votes = list(csv.DictReader(io.StringIO(out)))
    assert len(votes) == 24 and sum(v["method"] == "echodistill" for v in votes) == 17
    for v in votes:
        assert v["image"] == f"tiny/{v['method']}/default/{v['concept']}/seed0/images/p{int(v['prompt_index']):02d}" \
                             f"_s{v['eval_seed']}.png"  # relative to the results folder
        order = v["shown_order"].split(";")
        assert sorted(order) == sorted(f"{m}/default" for m in ("echodistill", "custom_diffusion", "cones2",
                                                                  "disenbooth"))
        assert order[int(v["shown_position"]) - 1] == f"{v['method']}/{v['variant']}"
    by_trial: dict[str, set[str]] = {}
    for v in votes:
        by_trial.setdefault(v["trial"], set()).add(v["shown_order"])
    assert any(len(orders) > 1 for orders in by_trial.values())  # the order is drawn per participant


def test_table_of_another_design_says_why_the_paper_is_not_beside_it(world, monkeypatch, capsys) -> None:
    results, _ = world
    path, _ = create_study(world)
    vote_all(path, {0: 10, 1: 10, 2: 7, 3: 5})  # 4 participants x 8 trials
    code, out, err = bench(monkeypatch, capsys, "table", "study", "--results", results)
    assert code == 0, err
    assert "32 annotations from 4 participants on 8 trials" in out and "chance level 50%" in out
    assert "Paper (%)" not in out and "66.90" not in out and "| Cones 2 |" not in out
    assert "The paper's numbers are not shown: its study was best of 4" in out and "this one is best of 2" in out
    code, csv_text, _ = bench(monkeypatch, capsys, "table", "study", "--results", results, "--format", "csv")
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert set(rows) == {"EchoDistill", "Custom Diffusion"} and rows["EchoDistill"]["paper_preference_pct"] == ""
    assert int(rows["EchoDistill"]["votes"]) + int(rows["Custom Diffusion"]["votes"]) == 32
    assert bench(monkeypatch, capsys, "table", "study", "--results", results, "--format", "csv")[1] == csv_text
    code, _, err = bench(monkeypatch, capsys, "table", "study", "--results", results, "--study", "nope")
    assert code == 2 and "no study 'nope'" in err and "studies: s1" in err


def test_bootstrap_interval_widens_with_fewer_participants() -> None:
    import random

    from bench.study.table import bootstrap

    # 20 participants x 40 trials, each vote for method 0 with probability 0.7
    rng = random.Random(1)
    people, trials, choice = [], [], []
    for p in range(20):
        for t in range(40):
            people.append(p), trials.append(t), choice.append(0 if rng.random() < 0.7 else 1)
    share = 100 * choice.count(0) / len(choice)
    low, high = bootstrap(people, trials, choice, 2)
    assert low[0] < share < high[0] and high[0] - low[0] < 15
    assert low[1] == pytest.approx(100 - high[0]) and high[1] == pytest.approx(100 - low[0])
    few = [(p, t, c) for p, t, c in zip(people, trials, choice) if p < 3]
    low3, high3 = bootstrap(*map(list, zip(*few)), 2)
    assert high3[0] - low3[0] >= high[0] - low[0]
    everyone = bootstrap(people, trials, [0] * len(people), 2)
    assert everyone == ([100.0, 0.0], [100.0, 0.0])


def test_report_shows_table7(world, monkeypatch, capsys, tmp_path: Path) -> None:
    results, data = world
    path, _ = create_study(world)
    vote_all(path, {0: 10, 1: 3})
    code, _, err = bench(monkeypatch, capsys, "report", "--results", results, "--data", data, "--out",
                         tmp_path / "rep")
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## User study" in md and "Table 7: user preference study `s1`" in md and "| EchoDistill |" in md
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<h2>User study</h2>" in page and "<td>EchoDistill</td>" in page


def test_an_abandoned_assignment_frees_its_place_after_the_ttl(world) -> None:
    path, _ = create_study(world, per_trial=1, trials=1)
    conn = db.open_study(path)
    (a, _), (b, _) = db.add_participants(conn, 2)
    pa, pb = (conn.execute("SELECT id FROM participants WHERE label = ?", (x,)).fetchone()[0] for x in (a, b))
    held = trials.next_trial(conn, pa)
    see_in_db(conn, pa, held)
    assert trials.next_trial(conn, pb) is None  # the only place is held by a
    conn.execute("UPDATE assignments SET assigned_at = assigned_at - 3600")  # a left an hour ago (ttl 30 min)
    again = trials.next_trial(conn, pb)
    assert again["trial"] == held["trial"]
    see_in_db(conn, pb, again)
    trials.vote(conn, pb, again["trial"], again["candidates"][0]["id"])
    with pytest.raises(db.Refused) as err:  # a comes back: the trial is full, nothing recorded
        trials.vote(conn, pa, held["trial"], held["candidates"][1]["id"])
    assert err.value.status == 409 and err.value.reason == "trial_full"
    assert "already has its 1 votes" in err.value.message and "next trial" in err.value.message
    assert trials.next_trial(conn, pa) is None
    # the same when a asks for their trial instead of voting on it: the full trial is dropped, not served again
    conn.execute("INSERT INTO assignments VALUES (?, ?, 0)", (pa, held["trial"]))
    assert trials.next_trial(conn, pa) is None
    assert conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1
    conn.close()
