"""Planned runs (`bench.runs.planned`): each job resolved once, carried as values to every consumer."""

from __future__ import annotations

import json
import pickle
import sys

import pytest

from bench import registry
from bench.runs import Outcome, SweepRequest, prepare


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """Every `get_method` call, wherever it was imported."""
    calls: list[str] = []
    original = registry.get_method

    def counted(name: str):
        calls.append(name)
        return original(name)

    for module in list(sys.modules.values()):
        if getattr(module, "get_method", None) is original:
            monkeypatch.setattr(module, "get_method", counted)
    return calls


def request(root, results, **extra) -> SweepRequest:
    return SweepRequest(methods=("fake",), variants=(("default", {}),), concepts="dog", data=root, results=results,
                        **extra)


def test_one_job_looks_its_method_up_once(fake, lookups, dreambench_root, tmp_path) -> None:
    from bench.executors import ExecOptions, sweep

    summary, code = sweep(request(dreambench_root, tmp_path), ExecOptions())
    assert code == 0 and summary == "1 done"
    assert lookups == ["fake"], "prepare looks the method up once; execute_job instantiates the class it holds"
    lookups.clear()
    summary, _ = sweep(request(dreambench_root, tmp_path), ExecOptions())
    assert summary == "1 skipped" and lookups == ["fake"]


def test_a_planned_run_carries_its_values(fake, dreambench_root, tmp_path) -> None:
    from bench.runs import execute_job

    runs, ctx = prepare(request(dreambench_root, tmp_path, seeds=(0, 1)))
    run = runs[0]
    assert run.run_dir == tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0"
    assert json.loads(run.config)["iterations"] == 6 and run.trains and run.version == 1
    assert run.profile.name == "tiny" and ctx.profiles[("tiny", "sd-turbo")].name == "tiny"
    assert ctx.suite_info["name"] == run.suite == "tiny"
    outcome = execute_job(run, ctx)
    assert isinstance(outcome, Outcome) and outcome.status == "done" and outcome.job == run.job
    record = json.loads((run.run_dir / "record.json").read_text())
    assert record["config_hash"] == run.config_hash and record["training_hash"] == run.training_hash
    assert record["config"] == json.loads(run.config)


def test_a_planned_run_crosses_processes_as_plain_values(fake, dreambench_root, tmp_path, lookups) -> None:
    """Pickled to a worker it holds no class: the method is looked up there once, its config built from JSON."""
    runs, _ = prepare(request(dreambench_root, tmp_path))
    lookups.clear()
    copy = pickle.loads(pickle.dumps(runs[0]))
    assert copy == runs[0] and hash(copy) == hash(runs[0]) and copy._method is None and copy._config is None
    assert copy.typed_config() == runs[0].typed_config() and lookups == ["fake"]
    copy.typed_config(), copy.method, copy.info
    assert lookups == ["fake"], "looked up once in the receiving process"


def test_requests_and_options_are_built_with_keywords() -> None:
    from bench.executors import ExecOptions

    with pytest.raises(TypeError):
        SweepRequest(("fake",), (("default", {}),))  # type: ignore[misc]
    with pytest.raises(TypeError):
        ExecOptions("local")  # type: ignore[misc]
