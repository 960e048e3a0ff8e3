"""Methods from outside the repository: the README's toy method file, run end to end on tiny from another folder;
`--include` and `bench.methods` entry points register lazily; `bench check-method` runs the contract on them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import plugins
from bench.api import BenchError
from tests.helpers import bench

REPO = Path(__file__).resolve().parents[1]


def toy_source() -> str:
    """The toy method exactly as the README shows it (the python block after its `toy-method` marker)."""
    text = (REPO / "README.md").read_text()
    after = text[text.index("<!-- toy-method"):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


@pytest.fixture
def toy_file(tmp_path: Path) -> Path:
    outside = tmp_path / "my_methods"
    outside.mkdir()
    (outside / "toy_method.py").write_text(toy_source())
    return outside / "toy_method.py"


@pytest.fixture
def clean_registry(monkeypatch):
    """A registry copy and a fresh discovery state, so one test's includes never leak into another."""
    from bench import registry

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    monkeypatch.setattr(plugins, "_discovered", set())
    monkeypatch.setenv(plugins.INCLUDE_ENV, "")  # restored afterwards, even where `include` sets it
    return registry


def run_included(file: Path, method: str, data: Path, results: Path, cwd: Path) -> tuple[dict[str, str], str]:
    """`bench run --include FILE --method METHOD` on dog (tiny) in a fresh process, with no include inherited from
    this one; asserts it exits 0 and returns the environment it ran with (for later commands) and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(plugins.INCLUDE_ENV, None)
    cmd = [sys.executable, "-m", "bench.cli", "run", "--include", str(file), "--method", method, "--concepts", "dog",
           "--profile", "tiny", "--data", str(data), "--results", str(results)]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return env, done.stderr


def test_readme_toy_method_runs_end_to_end_from_outside(toy_file, dreambench_root, tmp_path) -> None:
    results = tmp_path / "results"
    run_included(toy_file, "toy", dreambench_root, results, tmp_path)
    run = results / "tiny" / "toy" / "default" / "dog" / "seed0"
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "done" and record["method"] == "toy"
    assert record["config"] == {"iterations": 10, "lr": 0.5, "noise": 0.1, "steps": 1}, "SCHEDULE capped on tiny"
    assert {"clip_t", "clip_i", "dino"} <= set(record["metrics"])
    assert (run / "weights" / "colour.safetensors").is_file() and list((run / "images").glob("*.png"))
    _, again = run_included(toy_file, "toy", dreambench_root, results, tmp_path)
    assert "1 skipped" in again, again[-2000:]


def test_check_method_on_an_included_file(toy_file, clean_registry, monkeypatch, capsys) -> None:
    code, out, err = bench(monkeypatch, capsys, "check-method", "toy", "--include", toy_file)
    assert code == 0, err
    assert "ok  load" in out and "toy follows the method contract" in out
    code, out, _ = bench(monkeypatch, capsys, "ls", "methods", f"--include={toy_file}")
    assert code == 0 and "toy" in out.split() and "echodistill" in out.split()


def test_check_method_names_the_broken_check(toy_file, clean_registry, monkeypatch, capsys) -> None:
    broken = toy_file.with_name("broken_toy.py")
    broken.write_text(toy_file.read_text().replace('"toy"', '"broken_toy"').replace(
        'pixels.round().to(torch.uint8).numpy()', '(pixels * torch.rand(1)).round().to(torch.uint8).numpy()'))
    code, _, err = bench(monkeypatch, capsys, "check-method", "broken_toy", "--include", broken)
    assert code == 1 and "FAIL determinism" in err


def test_an_included_file_is_imported_once_when_included(tmp_path, clean_registry) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "eager.py"
    path.write_text(toy_source() + f"\nwith open({str(marker)!r}, 'a') as f:\n    f.write('x')\n")
    assert plugins.include([str(path)], clean_registry.METHODS) == ["toy"]
    assert marker.read_text() == "x" and "toy" in clean_registry.method_names()
    assert clean_registry.get_method("toy").__name__ == "MeanColour" and marker.read_text() == "x"
    assert os.environ[plugins.INCLUDE_ENV] == str(path.resolve()), "passed on to worker processes"


LORA8 = '''"""LoRA at rank 8: a built-in method's subclass that sets only its name, label and config."""

from dataclasses import dataclass
from typing import ClassVar

from baselines.lora import LoRA, LoRAConfig


@dataclass(frozen=True)
class LoRA8Config(LoRAConfig):
    rank: int = 8
    """LoRA rank r."""


class LoRA8(LoRA):
    name: ClassVar[str] = "lora8"
    label: ClassVar[str] = "LoRA (rank 8)"
    Config: ClassVar[type] = LoRA8Config
'''


def test_a_subclass_plugin_runs_and_its_table_row_needs_no_include(tmp_path, dreambench_root, clean_registry) -> None:
    """`class LoRA8(LoRA)` inherits `train` and `load`: it is a method (the imported LoRA beside it is not one of
    the file's), it runs, and `bench table main` without `--include` shows its row as it declared it, in a
    section of its own, labelled once."""
    path = tmp_path / "lora8.py"
    path.write_text(LORA8)
    assert plugins.method_classes(path) == {"lora8": f"{path.resolve()}:LoRA8"}
    results = tmp_path / "results"
    env, _ = run_included(path, "lora8", dreambench_root, results, tmp_path)
    record = json.loads((results / "tiny" / "lora8" / "default" / "dog" / "seed0" / "record.json").read_text())
    assert record["status"] == "done" and record["config"]["rank"] == 8
    assert record["presentation"] == {"label": "LoRA (rank 8)", "table_view": None, "table_view_note": "",
                                      "model": "SD Turbo"}
    table = subprocess.run([sys.executable, "-m", "bench.cli", "table", "main", "--results", str(results)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "#### Other methods" in table.stdout and "| LoRA (rank 8) | default | SD Turbo |" in table.stdout
    assert "(rank 8) (" not in table.stdout


@pytest.mark.parametrize("content, message", [
    ("x = 1\n", "no method class in it"),
    ("def broken(:\n", "invalid syntax at line 1"),
    ("raise RuntimeError('no GPU here')\n", "importing it raised RuntimeError: no GPU here"),
])
def test_bad_include_is_one_line(content, message, tmp_path, clean_registry, monkeypatch, capsys) -> None:
    path = tmp_path / "bad.py"
    path.write_text(content)
    code, _, err = bench(monkeypatch, capsys, "ls", "methods", "--include", path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    code, _, err = bench(monkeypatch, capsys, "ls", "methods", "--include", tmp_path / "absent.py")
    assert code == 2 and "no such file" in err


def test_a_name_clash_is_refused(toy_file, clean_registry) -> None:
    clash = toy_file.with_name("clash.py")
    clash.write_text(toy_file.read_text().replace('name: ClassVar[str] = "toy"', 'name: ClassVar[str] = "lora"'))
    with pytest.raises(BenchError, match="method 'lora' from .*clash.py clashes with the registered 'lora'"):
        plugins.include([str(clash)], clean_registry.METHODS)


def test_entry_points_register_lazily(toy_file, clean_registry, monkeypatch) -> None:
    from importlib import metadata

    monkeypatch.syspath_prepend(str(toy_file.parent))
    point = metadata.EntryPoint("toy_ep", "toy_method:MeanColour", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    assert "toy_ep" in clean_registry.method_names() and "toy_method" not in sys.modules
    assert clean_registry.get_method("toy_ep").name == "toy"
    sys.modules.pop("toy_method", None)


def renamed_source() -> str:
    """The README's toy method with every role-bearing field renamed (`iterations` -> `fit_iters`, `steps` ->
    `paint_steps`) and a batch size under its own name: the harness must find each through its metadata."""
    source = re.sub(r"\biterations\b", "fit_iters", toy_source())
    source = re.sub(r"\bsteps\b", "paint_steps", source).replace('"toy"', '"toy_renamed"')
    source = source.replace("from bench.config import SAMPLING_STEPS, SCHEDULE",
                            "from bench.config import BATCH_SIZE, SAMPLING_STEPS, SCHEDULE")
    return source.replace('    lr: float = 0.5\n', '    lr: float = 0.5\n    photos_per_step: int = field(default=1, '
                                                    'metadata=BATCH_SIZE)\n    """Unused: a batch size by role."""\n')


def test_renamed_schedule_fields_run_perf_and_plan(tmp_path, clean_registry, dreambench_root, monkeypatch,
                                                   capsys) -> None:
    """No field name means anything: capped on tiny by `bench run`, timed by `bench perf`, costed by `bench plan`,
    listed by `bench table main`, all through the fields' roles."""
    path = tmp_path / "renamed.py"
    path.write_text(renamed_source())
    assert "iterations" not in re.sub(r'""".*?"""|"[^"\n]*"', "", path.read_text(), flags=re.S)
    results, perf = tmp_path / "results", tmp_path / "perf"
    common = ["--include", path, "--data", dreambench_root]
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "toy_renamed", "--concepts", "dog", "--results",
                         results, *common)
    assert code == 0 and "1 done" in err, err
    record = json.loads((results / "tiny/toy_renamed/default/dog/seed0/record.json").read_text())
    assert record["config"]["fit_iters"] == 10 and record["timing"]["iterations"] == 10, "SCHEDULE capped on tiny"
    code, out, err = bench(monkeypatch, capsys, "perf", "--methods", "toy_renamed", "--warmup", "1", "--iterations",
                           "2", "--batch", "3", "--sweep-batch", "2", "--device", "cpu", "--out", perf,
                           "--score-images", "0", *common)
    assert code == 0, err
    row = json.loads(next(perf.glob("*.json")).read_text())["methods"][0]
    assert row["config"]["fit_iters"] == 1 + 2 + 2 and row["config"]["photos_per_step"] == 3
    assert row["iterations_timed"] == 2 and row["train_step_s"] > 0
    code, out, err = bench(monkeypatch, capsys, "plan", "--method", "toy_renamed", "--concepts", "dog,cat",
                           "--results", results, "--perf", perf, "--format", "json", "--device", "cpu", *common)
    assert code == 0, err
    plan = json.loads(out)["rows"][0]
    assert (plan["runs"], plan["done"], plan["left"], plan["source"]) == (2, 1, 1, "perf")
    per_image = row["infer_s_per_image_batched"] * 25  # 25 prompts x tiny's one evaluation seed, one step
    assert plan["hours_left"] * 3600 == pytest.approx(row["train_step_s"] * 10 / 3 + per_image, rel=1e-6)
    code, out, err = bench(monkeypatch, capsys, "table", "main", "--results", results)
    assert code == 0 and "toy_renamed" in out, err


PALETTE = '''

# --- a method with a model of its own (appended to the README's toy method) ---

from bench.api import Models
from bench.models.component import Component, ModelRoles, hub_file
from bench.models.tiny import build_once
from bench.paths import cache_root

PALETTE_VERSION = 1


def palette_root() -> Path:
    return cache_root() / f"tiny-palette-v{PALETTE_VERSION}"


def build_tiny_palette() -> Path:
    """The tiny stand-in: a seeded 3 -> 3 linear map, saved as the real one would be."""

    def build(out: Path) -> None:
        torch.manual_seed(42)
        net = torch.nn.Linear(3, 3)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "palette.safetensors"))

    return build_once(palette_root(), PALETTE_VERSION, build)


def load_palette(comp: Component, random_init: bool) -> torch.nn.Module:
    net = torch.nn.Linear(3, 3)
    if not random_init:
        net.load_state_dict(load_file(str(hub_file(comp))))
    return net


def palette_roles(profile: str) -> dict[str, Component]:
    source = str(palette_root()) if profile == "tiny" else "example/palette"
    return {"palette": Component("palette", "palette", source, file="palette.safetensors")}


class PaletteColour(MeanColour):
    name: ClassVar[str] = "palette"
    label: ClassVar[str] = "Palette"
    base_model: ClassVar[str] = "Palette net"
    model_roles: ClassVar[ModelRoles] = ModelRoles(palette_roles, {"palette": load_palette}, build_tiny_palette)

    def train(self, concept, models: Models, out_dir: Path, seed: int, log) -> ToyTrained:
        trained = super().train(concept, models, out_dir, seed, log)
        with torch.no_grad():
            trained.colour = torch.sigmoid(models.palette(trained.colour))
        return trained
'''


def test_a_plugin_brings_its_own_model_role(tmp_path, dreambench_root, clean_registry) -> None:
    """A role declared in a file outside the repository (its kind, loader, `--weights` group and tiny stand-in)
    joins that method's profile only, loads on tiny through the harness's loading path, runs under `bench run`,
    and `bench table main` shows the run (without `--include`) as the file declared it."""
    from bench.models.loading import Models
    from bench.models.profiles import get_profile
    from bench.paths import cache_root

    path = tmp_path / "outside" / "palette.py"
    path.parent.mkdir()
    path.write_text(toy_source() + PALETTE)
    assert plugins.include([str(path)], clean_registry.METHODS) == ["toy", "palette"]
    cls = clean_registry.get_method("palette")
    profile = get_profile("tiny").for_method(cls)
    assert profile.components["palette"].methods == ("palette",)
    assert "palette" not in get_profile("tiny").for_method("lora").components
    net = Models(profile, "cpu").palette
    assert isinstance(net, __import__("torch").nn.Linear) and not net.weight.requires_grad
    assert (cache_root() / "tiny-palette-v1" / "palette.safetensors").is_file()
    assert get_profile("paper", weights={"palette": "/w/p"}).for_method(cls).components["palette"].source == "/w/p"

    results = tmp_path / "results"
    env, _ = run_included(path, "palette", dreambench_root, results, tmp_path)
    record = json.loads((results / "tiny" / "palette" / "default" / "dog" / "seed0" / "record.json").read_text())
    assert record["status"] == "done"
    assert record["models"]["components"]["palette"]["source"] == str(cache_root() / "tiny-palette-v1")
    table = subprocess.run([sys.executable, "-m", "bench.cli", "table", "main", "--results", str(results)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "| Palette | default | Palette net |" in table.stdout

