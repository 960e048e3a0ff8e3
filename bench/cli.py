"""The `bench` command line. Each command parses its options, builds a plan or a config, and calls one function.

Heavy libraries (torch, diffusers) are imported inside commands, so `bench --help` is instant. A `BenchError`
anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from bench.api import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark harness for one-step diffusion personalization (EchoDistill and baselines).")
data_app = typer.Typer(no_args_is_help=True, help="Validate or fetch a DreamBench copy.")
app.add_typer(data_app, name="data")

# Options shared by every command that touches data or results (architecture.md, "CLI surface").
DATA = typer.Option(None, "--data", help="Dataset root (else $BENCH_DATA, else ./data/dreambench).")
RESULTS = typer.Option(Path("results"), "--results", help="Results root.")
PROFILE = typer.Option("tiny", "--profile", help="Model profile: tiny | paper | paper-random.")
CONCEPTS = typer.Option("all", "--concepts", help="'all' or a comma-separated list, e.g. dog,teapot.")
SEEDS = typer.Option("0", "--seeds", help="Training seeds, comma-separated (e.g. 0,1,2,3).")
SUITE = typer.Option(None, "--suite", help="Metric suite: paper | dreambooth | tiny (default: by profile).")
DEVICE = typer.Option(None, "--device", help="Torch device (default: cuda if available, else cpu).")
WEIGHTS = typer.Option(None, "--weights", help="Local weights, GROUP=PATH (repeatable): student, teacher, ...")
FORCE = typer.Option(False, "--force", help="Recompute runs even when a finished record matches.")
EXECUTOR = typer.Option("local", "--executor", help="Where jobs run: local.")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{what} must be comma-separated integers, got '{text}'") from None


def _sets(items: list[str] | None) -> dict:
    """`--set key=value` pairs; values parsed as JSON when they are JSON (numbers, lists), else strings."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"bad --set '{item}'; expected KEY=VALUE, e.g. --set iterations=500")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _sweep(methods: list[str], variants: list[tuple[str, dict]], concepts: str, seeds: str, profile: str,
           backbone: str, data: Optional[Path], results: Path, suite: Optional[str], device: Optional[str],
           weights: Optional[list[str]], force: bool, executor: str, concept_dir: Optional[Path] = None,
           class_noun: Optional[str] = None) -> None:
    from bench import data as dataset
    from bench.executors import run_jobs, summarize
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile, parse_weights
    from bench.paths import data_root
    from bench.runs import Context, default_suite, plan

    weight_map = parse_weights(weights or [])
    get_profile(profile, backbone, weight_map)  # validates profile, backbone and weight groups up front
    suite = suite or default_suite(profile)
    get_suite(suite)
    root = data_root(data)
    ctx = Context(data=root, results=results, suite=suite, device=device, weights=weight_map, force=force)
    if concept_dir is not None:
        if not class_noun:
            raise BenchError("--concept-dir needs --class-noun (e.g. --class-noun dog)")
        concept = dataset.load_folder_concept(concept_dir, class_noun, prompts_root=root)
        ctx.concept_dirs[concept.name] = (str(concept_dir), class_noun)
        names = [concept.name]
    else:
        names = [c.name for c in dataset.select_concepts(root, concepts)]
    jobs = plan(methods, variants, names, _ints(seeds, "--seeds"), profile, backbone)
    results_list = run_jobs(jobs, ctx, executor)
    typer.echo(summarize(results_list), err=True)
    failed = [r for r in results_list if r["status"] == "failed"]
    if failed:
        typer.echo(f"{len(failed)} run(s) failed; see `bench status --results {results}`", err=True)


@app.command()
def run(method: str = typer.Option(..., "--method", help="Method name(s), comma-separated; see `bench ls methods`."),
        concepts: str = CONCEPTS, variant: str = typer.Option("default", "--variant", help="Named variant(s)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE (repeatable)."),
        seeds: str = SEEDS, profile: str = PROFILE,
        backbone: str = typer.Option("sd-turbo", "--backbone", help="sd-turbo | hyper-sd15."),
        data: Optional[Path] = DATA, results: Path = RESULTS, suite: Optional[str] = SUITE,
        device: Optional[str] = DEVICE, weights: Optional[list[str]] = WEIGHTS, force: bool = FORCE,
        executor: str = EXECUTOR,
        concept_dir: Optional[Path] = typer.Option(None, "--concept-dir", help="Your own concept: a folder of photos."),
        class_noun: Optional[str] = typer.Option(None, "--class-noun", help="Class noun for --concept-dir."),
        ) -> None:
    """Train, sample, score and record METHOD on each concept (finished runs are skipped)."""
    from bench.ablations import override_suffix
    from bench.runs import named_variants

    overrides = _sets(set_)
    variants = [(f"{name}+{override_suffix(overrides)}" if overrides else name, {**base, **overrides})
                for name, base in named_variants(method.split(","), variant.split(","))]
    _sweep(method.split(","), variants, concepts, seeds, profile, backbone, data, results, suite, device, weights,
           force, executor, concept_dir, class_noun)


@app.command()
def ablate(drop: Optional[list[str]] = typer.Option(None, "--drop", help="Component to remove (repeatable)."),
           teacher_first: bool = typer.Option(False, "--teacher-first", help="Train the teacher, then distil."),
           shots: Optional[int] = typer.Option(None, "--shots", help="Reference images per concept (e.g. 1)."),
           nfe: Optional[str] = typer.Option(None, "--nfe", help="Sampling steps of the same student, e.g. 1,2,4."),
           backbone: str = typer.Option("sd-turbo", "--backbone", help="sd-turbo | hyper-sd15."),
           method: str = typer.Option("echodistill", "--method"), concepts: str = CONCEPTS, seeds: str = SEEDS,
           profile: str = PROFILE, data: Optional[Path] = DATA, results: Path = RESULTS,
           suite: Optional[str] = SUITE, device: Optional[str] = DEVICE, weights: Optional[list[str]] = WEIGHTS,
           force: bool = FORCE, executor: str = EXECUTOR) -> None:
    """Run the paper's ablations of EchoDistill (one variant per flag combination)."""
    from bench.ablations import ablation_variants

    variants = ablation_variants(drop or [], teacher_first, shots, nfe, backbone)
    _sweep([method], variants, concepts, seeds, profile, backbone, data, results, suite, device, weights, force,
           executor)


@app.command("ls")
def ls(what: str = typer.Argument(..., help="methods | concepts | variants | runs"), data: Optional[Path] = DATA,
       results: Path = RESULTS, profile: Optional[str] = typer.Option(None, "--profile")) -> None:
    """List registered methods, dataset concepts, method variants, or recorded runs."""
    from bench.registry import get_method, method_names, unknown

    if what == "methods":
        for name in method_names():
            typer.echo(name)
    elif what == "variants":
        for name in method_names():
            typer.echo(f"{name}: {', '.join(get_method(name).variants)}")
    elif what == "concepts":
        from bench.data import load_dreambench
        from bench.paths import data_root

        for c in load_dreambench(data_root(data)):
            typer.echo(f"{c.name}\t{c.class_noun}\t{'live' if c.live else 'object'}\t{len(c.images)} images")
    elif what == "runs":
        from bench.store import iter_records

        for r in iter_records(results, profile):
            metrics = r.get("metrics") or {}
            scores = " ".join(f"{k}={metrics[k]:.3f}" for k in ("clip_t", "clip_i", "dino") if k in metrics)
            typer.echo(f"{r['status']:7} {r['profile']}/{r['method']}/{r['variant']}/{r['concept']}/seed{r['seed']}"
                       f"  {scores}")
    else:
        raise unknown("listing", what, ["methods", "concepts", "variants", "runs"])


@app.command()
def status(results: Path = RESULTS, profile: Optional[str] = typer.Option(None, "--profile")) -> None:
    """Done, running and failed runs under the results folder, with failure reasons."""
    from bench.store import run_status

    counts, lines = run_status(results, profile)
    for line in lines:
        typer.echo(line)
    typer.echo(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs")


@app.command()
def table(name: str = typer.Argument("main", help="Which table: main."),
          fmt: str = typer.Option("md", "--format", help="md | csv"), results: Path = RESULTS,
          profile: Optional[str] = typer.Option(None, "--profile", help="Only records of this profile."),
          out: Optional[Path] = typer.Option(None, "--out", help="Also write the table to this file.")) -> None:
    """Render a paper table from run records."""
    from bench.tables import build_table, render

    text = render(build_table(name, results, profile), fmt)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    typer.echo(text)


@app.command()
def generate(run_dir: Path = typer.Option(..., "--run", help="A finished run folder."),
             prompt: str = typer.Option(..., "--prompt", help='e.g. "a <new1> dog on the moon"'),
             steps: Optional[int] = typer.Option(None, "--steps"), seed: int = typer.Option(0, "--seed"),
             out: Path = typer.Option(Path("generated.png"), "--out"), device: Optional[str] = DEVICE,
             weights: Optional[list[str]] = WEIGHTS) -> None:
    """Load a trained run and write one image."""
    from bench.generate import generate_image

    generate_image(run_dir, prompt, steps, seed, out, device, weights or [])
    typer.echo(str(out))


@data_app.command("check")
def data_check(folder: Path = typer.Argument(..., help="A DreamBench copy, or your own concept folder.")) -> None:
    """Validate a dataset folder: prompts file, subjects, every image decodes."""
    from bench import data

    try:
        data.find_dataset(folder)
        summary = data.check_dataset(folder)
    except BenchError:
        if not folder.is_dir() or (folder / "dataset").exists() or (folder / "prompts_and_classes.txt").exists():
            raise
        summary = data.check_folder(folder)
    typer.echo(json.dumps(summary, indent=1))


@data_app.command("download")
def data_download(dest: Path = typer.Argument(Path("data/dreambench"), help="Where to put DreamBench."),
                  url: Optional[str] = typer.Option(None, "--url", help="Repository URL (default: google/dreambooth).")
                  ) -> None:
    """Clone the public DreamBench repository and validate it."""
    from bench import data

    path = data.download_dreambench(dest, url or data.DREAMBENCH_URL)
    typer.echo(f"DreamBench ready at {path}")


def main() -> None:
    try:
        app()
    except BenchError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished runs are kept, unfinished ones will be redone", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
