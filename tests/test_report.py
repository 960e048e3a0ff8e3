"""`bench report`: Markdown + self-contained HTML with every table, bar charts, scatters, loss curves and
qualitative grids; the HTML is opened in headless Chromium to check that every figure loads and is visible.

Chromium is optional: without it the browser test skips (CI installs it: `apt-get install -y chromium`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import figures as F
from bench import report as R
from bench.tables import TABLES

RECORDS = Path(__file__).parent / "golden" / "records"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _results_with_images(root: Path) -> Path:
    """The golden records plus a small PNG for every scored image (main evaluation and views)."""
    from PIL import Image

    results = root / "results"
    shutil.copytree(RECORDS, results)
    for path in results.rglob("record.json"):
        rec = json.loads(path.read_text())
        evaluations = [("images", rec)] + [(f"views/{k}", v) for k, v in (rec.get("views") or {}).items()]
        for folder, ev in evaluations:
            for row in ev.get("images") or []:
                out = path.parent / folder / f"p{row['prompt_index']:02d}_s{row['eval_seed']}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                shade = (len(rec["method"]) * 20 % 256, row["prompt_index"] * 100 % 256, row["eval_seed"] * 150 % 256)
                Image.new("RGB", (16, 16), shade).save(out)
    return results


def _dataset(root: Path) -> Path:
    """A stand-in DreamBench folder: the prompts file and one photo per concept."""
    from PIL import Image

    data = root / "dreambench" / "dataset"
    data.mkdir(parents=True)
    (data / "prompts_and_classes.txt").write_text("subject_name,class\ndog,dog\nteapot,teapot\n")
    for concept, colour in (("dog", (200, 150, 60)), ("teapot", (90, 60, 40))):
        (data / concept).mkdir()
        Image.new("RGB", (24, 24), colour).save(data / concept / "00.jpg")
    return data.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report")
    results = _results_with_images(root)
    out = root / "out"
    summary = R.build_report(results, out, profile="tiny", data=_dataset(root))
    return {"results": results, "out": out, "summary": summary, "root": root}


def test_report_files_hold_every_table_and_figure(built: dict) -> None:
    out = built["out"]
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name in TABLES:  # every table with runs in the golden tree is present in both
        title = R.build_tables(name, R.load_records(built["results"], "tiny"))[0].title
        assert title in md and title.split(":")[0] in page
    figures = sorted((out / "figures").iterdir())
    kinds = {re.sub(r"^tiny-tiny-", "", p.stem).split("-")[-1] for p in figures}
    assert {"bars", "scatter", "losses", "grid"} <= kinds
    for f in figures:  # the Markdown links every figure, and the HTML embeds it
        assert f"(figures/{f.name})" in md
    assert page.count("<img ") == len(figures) == page.count("src='data:image/png;base64,")
    assert f"{len(figures)} figures" in built["summary"]


def test_html_is_self_contained(built: dict) -> None:
    page = (built["out"] / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"](?!data:)""", page), "external resource in the report"
    assert "<link" not in page and "http://" not in page and "https://" not in page


def test_loss_curves_read_the_logs(built: dict) -> None:
    records = [r for r in R.load_records(built["results"], "tiny") if r.method == "echodistill"]
    log = F.read_loss_log(Path(records[0].run_dir))
    assert log and {"phase", "iteration", "loss_student"} <= set(log[0])
    assert [p for _, p in F._phase_boundaries(log)] == ["distill", "echo"]


def test_unreadable_log_lines_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "loss_log.jsonl").write_text('{"phase": "distill", "iteration": 0, "loss": 1.0}\n{"phase": "dis\n')
    assert F.read_loss_log(tmp_path) == [{"phase": "distill", "iteration": 0, "loss": 1.0}]
    assert F.read_loss_log(tmp_path / "absent") == []


def test_grid_shares_prompt_and_seed_across_methods(built: dict) -> None:
    records = R.load_records(built["results"], "tiny")
    runs: dict = {}
    for r in records:
        if r.status == "done":
            runs.setdefault((r.method, r.variant, r.concept), {})[r.seed] = r
    columns = [c for c in F.GRID_COLUMNS if (c[0], c[1], "dog") in runs]
    seed, (prompt_index, eval_seed), prompt = F._grid_choice(runs, columns, "dog", 0)
    for method, variant, _ in columns:
        rec = runs[(method, variant, "dog")][seed]
        assert any((i.prompt_index, i.eval_seed) == (prompt_index, eval_seed) for i in rec.images)
        assert (Path(rec.run_dir) / "images" / f"p{prompt_index:02d}_s{eval_seed}.png").is_file()
    assert "<new1> dog" in prompt


def test_without_the_dataset_the_reference_column_is_skipped_with_a_note(built: dict) -> None:
    records = R.load_records(built["results"], "paper")
    dataset, why = F._dataset_folder(built["root"] / "no-such-dataset")
    assert dataset is None and "reference column skipped" in why
    grid = F.qualitative_grid(records, "paper", "paper", dataset, why)
    assert grid is not None and "reference column skipped" in grid.caption
    assert F._dataset_folder(built["root"] / "dreambench")[0] is not None


def test_cli_report_calls_build_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command only parses options and calls `build_report` (which the tests above exercise)."""
    from typer.testing import CliRunner

    from bench.cli import app

    calls = []
    monkeypatch.setattr(R, "build_report", lambda *args: calls.append(args) or "wrote report")
    result = CliRunner().invoke(app, ["report", "--results", str(RECORDS), "--profile", "paper", "--out",
                                      str(tmp_path), "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert calls == [(RECORDS, tmp_path, "paper", tmp_path / "data")] and "wrote report" in result.output


# --- the page in a real browser --------------------------------------------------------------------------------

CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { var r = i.getBoundingClientRect();
    return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0 && r.width > 0 && r.height > 0; });
  var out = document.createElement('pre'); out.id = 'img-check';
  out.textContent = 'LOADED ' + ok.length + ' OF ' + imgs.length; document.body.appendChild(out);
});</script>"""


def _browser() -> str | None:
    explicit = os.environ.get("BENCH_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium(browser: str, profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile_dir}",
             "--hide-scrollbars", "--virtual-time-budget=15000"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_report_in_headless_chromium(built: dict, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium found (install with `apt-get install -y chromium`, or set BENCH_CHROMIUM)")
    page = (built["out"] / "report.html").read_text()
    n_figures = len(list((built["out"] / "figures").iterdir()))
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"))

    dom = _chromium(browser, tmp_path / "profile-dom", "--dump-dom", checked.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"id=\"img-check\">LOADED (\d+) OF (\d+)<", dom.stdout)
    assert found, f"the check script did not run; stderr: {dom.stderr[-1000:]}"
    loaded, total = map(int, found.groups())
    assert total == n_figures and loaded == total, f"{loaded} of {total} images loaded ({n_figures} figures)"

    shot = tmp_path / "report.png"
    result = _chromium(browser, tmp_path / "profile-shot", "--window-size=1400,2400", f"--screenshot={shot}",
                       checked.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"


def test_charts_and_the_paper_lookup_follow_the_declared_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fourth declared metric gets its own bar panel, and a paper row without a column for it reads NaN."""
    import math
    from types import SimpleNamespace

    from bench import figures
    from bench.tables import definitions

    four = (*figures.METRICS, "aesthetic")
    monkeypatch.setattr(figures, "METRICS", four)
    monkeypatch.setattr(figures, "METRIC_LABELS", {**figures.METRIC_LABELS, "aesthetic": "Aesthetic"})
    monkeypatch.setattr(definitions, "METRICS", four)
    key = next(iter(definitions.paper_rows()))
    paper = definitions._paper_values(key)
    assert math.isnan(paper["aesthetic"]) and not math.isnan(paper["clip_i"])
    stats = SimpleNamespace(mean=dict.fromkeys(four, 0.5), lo=dict.fromkeys(four, 0.4), hi=dict.fromkeys(four, 0.6))
    row = SimpleNamespace(stats=stats, label="m", variant="default", paper=paper)
    table = SimpleNamespace(measured=[row], title="T", profile="tiny", metric_suite="tiny", name="main")
    drawn = []
    original = figures._png
    monkeypatch.setattr(figures, "_png", lambda fig, tight=False: drawn.append(len(fig.axes)) or original(fig))
    assert figures.bar_chart(table) is not None and drawn == [4]
