"""The `bench` command line. Each command parses its options, builds a plan or a config, and calls one function.

Heavy libraries (torch, diffusers) are imported inside commands, so `bench --help` is instant. A `BenchError`
anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from bench.api import BenchError, InfraError, infra_cause
from bench.data_cli import data_app
from bench.learning_cli import learns
from bench.study.cli import study_app
from bench.tracking.options import INTERVAL, REPORT_TO, SAMPLE_EVERY, WATCH, tracking

EXIT_INFRA = 4
"""Exit code when the environment failed (disk full, device error, ...): the sweep stopped, nothing was recorded as
failed, unfinished runs are resumable."""

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark harness for one-step diffusion personalization (EchoDistill and baselines).",
                  epilog="Every command also takes `--include path/to/module.py` (repeatable): the method classes "
                         "in that file join the registry (bench.plugins), as installed `bench.methods` entry "
                         "points do.")
app.add_typer(data_app, name="data")  # validate or fetch a dataset (bench.data_cli)
app.add_typer(study_app, name="study")  # the preference study behind Table 7 (bench.study)
app.command("learns")(learns)  # the learning check (bench.learning_cli)

# Options shared by every command that touches data or results (architecture.md, "CLI surface").
DATA = typer.Option(None, "--data", help="Dataset root (else $BENCH_DATA, else ./data/dreambench).")
RESULTS = typer.Option(Path("results"), "--results", help="Results root.")
PROFILE = typer.Option("tiny", "--profile", help="Model profile: tiny | paper | paper-random.")
CONCEPTS = typer.Option("all", "--concepts", help="'all' or a comma-separated list, e.g. dog,teapot.")
SEEDS = typer.Option("0", "--seeds", help="Training seeds, comma-separated (e.g. 0,1,2,3).")
SUITE = typer.Option(None, "--suite", help="Metric suite: paper | paper-timm | dreambooth | tiny (default: by "
                                            "profile).")
DEVICE = typer.Option(None, "--device", help="Torch device (default: cuda if available, else cpu).")
SPEED = typer.Option(None, "--speed", help="Speed switch KEY=VALUE (repeatable): channels_last=auto|on|off, "
                                           "compile=off|regional, attention=sdpa|eager.")
WEIGHTS = typer.Option(None, "--weights", help="Local weights, GROUP=PATH (repeatable): student, teacher, ...")
FORCE = typer.Option(False, "--force", help="Recompute runs even when a finished record matches.")
# How a sweep runs: executors, resume and retry (bench.executors, bench.runs).
EXECUTOR = typer.Option("local", "--executor", help="Where jobs run: local | gpus (one process per GPU) | slurm.")
WORKERS = typer.Option(None, "--workers", help="gpus: worker processes (default one per GPU; N CPU workers "
                                               "without a GPU).")
RESUME = typer.Option(False, "--resume", help="Continue interrupted runs from their last checkpoint.")
RETRY = typer.Option(False, "--retry-failed", help="Re-run runs recorded as failed (kept and reported otherwise).")
PARTITION = typer.Option(None, "--partition", help="slurm: partition.")
TIME = typer.Option(None, "--time", help="slurm: time limit per job in minutes (default 120).")
GPUS_PER_JOB = typer.Option(None, "--gpus-per-job", help="slurm: GPUs per job (default 1).")
CPUS_PER_JOB = typer.Option(None, "--cpus-per-job", help="slurm: CPUs per job.")
MEM = typer.Option(None, "--mem", help="slurm: memory per job, e.g. 32G.")
SBATCH = typer.Option(None, "--sbatch", help="slurm: extra sbatch option KEY=VALUE (repeatable), e.g. account=proj.")
ARRAY = typer.Option(False, "--slurm-array", help="slurm: one job array instead of one job per run.")
NO_WAIT = typer.Option(False, "--no-wait", help="slurm: submit and return; follow with `bench status`.")
CLUSTER = typer.Option("slurm", "--cluster", help="slurm: slurm | local (same submission, on this machine).")
DATASET = typer.Option(None, "--dataset", help="dreambench | customconcept101 (default: told by the --data folder; "
                                               "customconcept101 alone means $BENCH_CC101 or ./data/customconcept101).")
THREADS = typer.Option(None, "--threads", help="CPU intra-op threads per process (also $BENCH_THREADS; default: "
                                               "the usable cores / the processes started, 1 on tiny).")
SHARD = typer.Option(None, "--shard", help="Run only part K of N of the plan (1-based K/N, e.g. 2/3): a fixed, "
                                           "cost-balanced split; runs sharing a training stay together.")


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


def _exec_options(executor: str, workers: Optional[int], partition: Optional[str], time: Optional[int],
                  gpus_per_job: Optional[int], cpus_per_job: Optional[int], mem: Optional[str],
                  sbatch: Optional[list[str]], slurm_array: bool, no_wait: bool, cluster: str):
    from bench.executors import ExecOptions

    return ExecOptions(executor=executor, workers=workers, partition=partition, time=time, gpus_per_job=gpus_per_job,
                       cpus_per_job=cpus_per_job, mem=mem, sbatch=tuple(sbatch or ()), array=slurm_array,
                       wait=not no_wait, cluster=cluster)


def _sweep(request, options, shard: Optional[str] = None) -> None:
    """Run a `SweepRequest` on the executor `options` describe (or its part `--shard K/N`); exit 3 on a failed run."""
    from bench.executors import sweep
    from bench.shard import parse_shard

    part = parse_shard(shard) if shard is not None else None
    summary, code = sweep(request, options, part)
    typer.echo(summary, err=True)
    if code:  # a run failed or is kept failed (EXIT_RUNS_FAILED), so that scripts and CI can tell
        raise typer.Exit(code)


@app.command()
def run(method: str = typer.Option(..., "--method", help="Method name(s), comma-separated; see `bench ls methods`."),
        concepts: str = CONCEPTS, variant: str = typer.Option("default", "--variant", help="Named variant(s)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE (repeatable)."),
        seeds: str = SEEDS, profile: str = PROFILE,
        backbone: str = typer.Option("sd-turbo", "--backbone", help="sd-turbo | hyper-sd15."),
        data: Optional[Path] = DATA, results: Path = RESULTS, suite: Optional[str] = SUITE,
        device: Optional[str] = DEVICE, weights: Optional[list[str]] = WEIGHTS, force: bool = FORCE,
        concept_dir: Optional[Path] = typer.Option(None, "--concept-dir", help="Your own concept: a folder of photos."),
        class_noun: Optional[str] = typer.Option(None, "--class-noun", help="Class noun for --concept-dir."),
        resume: bool = RESUME, retry_failed: bool = RETRY, executor: str = EXECUTOR, workers: Optional[int] = WORKERS,
        partition: Optional[str] = PARTITION, time: Optional[int] = TIME, gpus_per_job: Optional[int] = GPUS_PER_JOB,
        cpus_per_job: Optional[int] = CPUS_PER_JOB, mem: Optional[str] = MEM, sbatch: Optional[list[str]] = SBATCH,
        slurm_array: bool = ARRAY, no_wait: bool = NO_WAIT, cluster: str = CLUSTER,
        speed: Optional[list[str]] = SPEED, dataset: Optional[str] = DATASET, shard: Optional[str] = SHARD,
        report_to: Optional[list[str]] = REPORT_TO, sample_every: int = SAMPLE_EVERY,
        threads: Optional[int] = THREADS) -> None:
    """Train, sample, score and record METHOD on each concept (finished runs are skipped)."""
    from bench.data import dataset_root
    from bench.runs import SweepRequest, variants_for
    from bench.threads import set_override

    set_override(threads)

    data = dataset_root(data, dataset)

    options = _exec_options(executor, workers, partition, time, gpus_per_job, cpus_per_job, mem, sbatch, slurm_array,
                            no_wait, cluster)
    variants = variants_for(method.split(","), variant.split(","), _sets(set_))
    request = SweepRequest(methods=tuple(method.split(",")), variants=tuple(variants), concepts=concepts,
                           seeds=_ints(seeds, "--seeds"), profile=profile, backbone=backbone, data=data,
                           results=results, suite=suite, device=device, weights=tuple(weights or ()), force=force,
                           resume=resume, retry_failed=retry_failed, concept_dir=concept_dir, class_noun=class_noun,
                           speed=tuple(speed or ()), tracking=tracking(report_to, sample_every))
    _sweep(request, options, shard)


@app.command()
def ablate(drop: Optional[list[str]] = typer.Option(None, "--drop", help="Component to remove (repeatable)."),
           teacher_first: bool = typer.Option(False, "--teacher-first", help="Train the teacher, then distil."),
           shots: Optional[int] = typer.Option(None, "--shots", help="Reference images per concept (e.g. 1)."),
           nfe: Optional[str] = typer.Option(None, "--nfe", help="Sampling steps of the same student, e.g. 1,2,4."),
           backbone: str = typer.Option("sd-turbo", "--backbone", help="sd-turbo | hyper-sd15."),
           method: str = typer.Option("echodistill", "--method"), concepts: str = CONCEPTS, seeds: str = SEEDS,
           set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE on every variant."),
           profile: str = PROFILE, data: Optional[Path] = DATA, results: Path = RESULTS,
           suite: Optional[str] = SUITE, device: Optional[str] = DEVICE, weights: Optional[list[str]] = WEIGHTS,
           force: bool = FORCE, resume: bool = RESUME, retry_failed: bool = RETRY, executor: str = EXECUTOR,
           workers: Optional[int] = WORKERS, partition: Optional[str] = PARTITION, time: Optional[int] = TIME,
           gpus_per_job: Optional[int] = GPUS_PER_JOB, cpus_per_job: Optional[int] = CPUS_PER_JOB,
           mem: Optional[str] = MEM, sbatch: Optional[list[str]] = SBATCH, slurm_array: bool = ARRAY,
           no_wait: bool = NO_WAIT, cluster: str = CLUSTER, speed: Optional[list[str]] = SPEED,
           shard: Optional[str] = SHARD, report_to: Optional[list[str]] = REPORT_TO,
           sample_every: int = SAMPLE_EVERY, threads: Optional[int] = THREADS) -> None:
    """Run the paper's ablations of EchoDistill (one variant per flag combination)."""
    from bench.ablations import ablation_variants
    from bench.runs import SweepRequest
    from bench.threads import set_override

    set_override(threads)

    options = _exec_options(executor, workers, partition, time, gpus_per_job, cpus_per_job, mem, sbatch, slurm_array,
                            no_wait, cluster)
    variants = ablation_variants(drop or [], teacher_first, shots, nfe, backbone, _sets(set_), method=method)
    request = SweepRequest(methods=(method,), variants=tuple(variants), concepts=concepts,
                           seeds=_ints(seeds, "--seeds"), profile=profile, backbone=backbone, data=data,
                           results=results, suite=suite, device=device, weights=tuple(weights or ()), force=force,
                           resume=resume, retry_failed=retry_failed, speed=tuple(speed or ()),
                           tracking=tracking(report_to, sample_every))
    _sweep(request, options, shard)


@app.command("plan")
def plan_(method: Optional[str] = typer.Option(None, "--method", help="Method name(s), comma-separated "
                                               "(default: every method)."),
          variant: str = typer.Option("default", "--variant", help="Named variant(s)."),
          set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, as in `run`."),
          concepts: str = CONCEPTS, seeds: str = SEEDS, profile: str = PROFILE,
          backbone: str = typer.Option("sd-turbo", "--backbone"), data: Optional[Path] = DATA,
          results: Path = RESULTS, suite: Optional[str] = SUITE, device: Optional[str] = DEVICE,
          weights: Optional[list[str]] = WEIGHTS, shard: Optional[str] = SHARD,
          shards: Optional[int] = typer.Option(None, "--shards", help="Also show how N shards split the plan."),
          perf_dir: Optional[list[Path]] = typer.Option(None, "--perf", help="Folder of `bench perf` records "
                                                        "(repeatable; default results/perf and RESULTS/perf)."),
          fmt: str = typer.Option("md", "--format", help="md | json")) -> None:
    """Runs per method and variant, how many are done, and the estimated GPU-hours left (never runs anything)."""
    from bench.registry import method_names
    from bench.runs import variants_for
    from bench.shard import parse_shard, plan_command

    part = parse_shard(shard) if shard is not None else None
    methods = method.split(",") if method else method_names()
    typer.echo(plan_command(methods, variants_for(methods, variant.split(","), _sets(set_)), concepts,
                            _ints(seeds, "--seeds"), profile, backbone, data, results, suite, device, weights,
                            perf_dir, fmt, part, shards), nl=False)


@app.command()
def merge(sources: list[Path] = typer.Argument(..., help="Results folders to merge (e.g. one per shard)."),
          into: Path = typer.Option(..., "--into", help="The results folder to merge them into.")) -> None:
    """Copy finished runs from SRC folders into --into; a conflict (two different results of one run) stops it."""
    from bench.merge import merge as merge_results

    typer.echo(merge_results(sources, into).summary(into))


@app.command("ls")
def ls(what: str = typer.Argument(..., help="methods | concepts | variants | runs"), data: Optional[Path] = DATA,
       results: Path = RESULTS, profile: Optional[str] = typer.Option(None, "--profile"),
       dataset: Optional[str] = DATASET) -> None:
    """List registered methods, dataset concepts, method variants, or recorded runs."""
    from bench.naming import unknown
    from bench.registry import describe, get_method, method_names

    if what == "methods":
        for name in method_names():
            typer.echo(f"{name}\t{describe(name)}")
    elif what == "variants":
        for name in method_names():
            typer.echo(f"{name}: {', '.join(get_method(name).variants)}")
    elif what == "concepts":
        from bench.data import dataset_root, load_concepts
        from bench.paths import data_root

        for c in load_concepts(data_root(dataset_root(data, dataset))):
            typer.echo(f"{c.name}\t{c.class_noun}\t{'live' if c.live else 'object'}\t{len(c.images)} images")
    elif what == "runs":
        from bench.metrics.declared import NAMES as METRIC_NAMES
        from bench.store import iter_run_records

        for r in iter_run_records(results, profile):
            metrics = r.metrics or {}
            scores = " ".join(f"{k}={metrics[k]:.3f}" for k in METRIC_NAMES if k in metrics)
            typer.echo(f"{r.status or '?':7} {r.label()}  {scores}")
    else:
        raise unknown("listing", what, ["methods", "concepts", "variants", "runs"])


@app.command()
def status(results: Path = RESULTS, profile: Optional[str] = typer.Option(None, "--profile"),
           method: Optional[str] = typer.Option(None, "--method", help="Compare with the plan of these methods."),
           variant: Optional[str] = typer.Option(None, "--variant", help="Named variant(s) of the plan."),
           set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, as in `run`."),
           concepts: str = CONCEPTS, seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds of the plan."),
           backbone: str = typer.Option("sd-turbo", "--backbone"), data: Optional[Path] = DATA,
           suite: Optional[str] = SUITE, watch: bool = WATCH, interval: float = INTERVAL) -> None:
    """Done, running, interrupted and failed runs (with reasons); with --method, also the plan's missing runs."""
    from bench.runs import status_report
    from bench.tracking.live import watch_status

    args = (results, profile, method.split(",") if method else None, variant.split(",") if variant else None,
            _sets(set_), concepts, _ints(seeds, "--seeds") if seeds else None, backbone, data, suite)
    watch_status(*args, interval) if watch else typer.echo(status_report(*args))


@app.command()
def score(method: str = typer.Option(..., "--method", help="Method name(s), comma-separated."),
          variant: str = typer.Option("default", "--variant", help="Named variant(s)."),
          set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, as in `run`."),
          concepts: str = CONCEPTS, seeds: str = SEEDS, profile: str = PROFILE,
          backbone: str = typer.Option("sd-turbo", "--backbone"), data: Optional[Path] = DATA,
          results: Path = RESULTS, suite: Optional[str] = SUITE, device: Optional[str] = DEVICE,
          weights: Optional[list[str]] = WEIGHTS,
          concept_dir: Optional[Path] = typer.Option(None, "--concept-dir", help="Runs of your own concept folder."),
          class_noun: Optional[str] = typer.Option(None, "--class-noun", help="Class noun for --concept-dir."),
          batch: Optional[int] = typer.Option(None, "--batch", help="Images per backbone call (default 256 on a "
                                                                     "GPU, 64 on a CPU)."),
          force: bool = typer.Option(False, "--force", help="Also rescore runs already scored under --suite.")
          ) -> None:
    """Score finished runs again from their saved images under --suite, all in one batched pass per backbone."""
    from bench.runs import SweepRequest, prepare, variants_for
    from bench.score import rescore

    if batch is not None and batch < 1:
        raise BenchError(f"--batch must be >= 1, got {batch}")
    methods = method.split(",")
    request = SweepRequest(methods=tuple(methods), variants=tuple(variants_for(methods, variant.split(","),
                                                                               _sets(set_))),
                           concepts=concepts, seeds=_ints(seeds, "--seeds"), profile=profile, backbone=backbone,
                           data=data, results=results, suite=suite, device=device, weights=tuple(weights or ()),
                           force=force, concept_dir=concept_dir, class_noun=class_noun)
    jobs, ctx = prepare(request, check_images=False)
    from bench.models.loading import default_device

    with _progress_bar() as (progress, task):
        outcome = rescore(jobs, ctx, device or default_device(), batch,
                          on_batch=lambda done, total: progress.update(task, completed=done, total=total))
    rate = f", {outcome['images'] / outcome['embed_s']:.1f} images/s" if outcome["embed_s"] > 0 else ""
    typer.echo(f"{len(outcome['rescored'])} rescored under suite {ctx.suite} ({outcome['images']} images embedded "
               f"in {outcome['embed_s']:.1f} s{rate}); {len(outcome['already'])} already under it")
    for key, why in (("not_done", "not finished (run `bench run` first)"),
                     ("outdated", "recorded with another config (run `bench run` to redo them)"),
                     ("missing_images", "with image files missing (`bench run --force` samples them again)"),
                     ("changed", "changed or locked while scoring (left as they were)")):
        if outcome[key]:
            typer.echo(f"{len(outcome[key])} {why}: {', '.join(outcome[key][:5])}"
                       + (" ..." if len(outcome[key]) > 5 else ""))


@contextmanager
def _progress_bar() -> Iterator[tuple[Any, Any]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("embedding images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        yield progress, progress.add_task("embed", total=None)


@app.command()
def table(name: str = typer.Argument("main", help="main|ablation|echo|nfe|backbone|alternatives|shots|all|study"),
          fmt: str = typer.Option("md", "--format", help="md | csv"),
          compare: Optional[str] = typer.Option(None, "--compare", help="'paper': add the paper's numbers and Δ."),
          results: Path = RESULTS,
          profile: Optional[str] = typer.Option(None, "--profile", help="Only records of this profile."),
          out: Optional[Path] = typer.Option(None, "--out", help="Also write <table>.<format> files into DIR."),
          study: Optional[str] = typer.Option(None, "--study", help="study: which study (default: the only one)."),
          exclude: Optional[str] = typer.Option(None, "--exclude", help="study: participants left out (e.g. p03)."),
          against: Optional[str] = typer.Option(None, "--against", help="Add each row's paired difference to this "
                                                "method, and mark cells not distinguishable from the best."),
          dataset: Optional[str] = typer.Option(None, "--dataset", help="Only one dataset's tables: dreambench | "
                                                "customconcept101 | yours (--concept-dir); default: each apart.")
          ) -> None:
    """Render the paper's tables from run records (never trains or scores); `study` renders Table 7 from votes."""
    from bench.tables import table_command

    if name == "study":
        from bench.study import commands

        path = commands.resolve_study(results, profile, study)
        text = commands.table(path, fmt, commands.parse_exclude(path, exclude))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"study.{fmt}").write_text(text)
        typer.echo(text, nl=False)
        return

    typer.echo(table_command(name, results, profile, fmt, compare, out, against, dataset), nl=False)


@app.command()
def compare(methods: list[str] = typer.Argument(..., help="Reference first, then the methods it is compared with: "
                                                "method or method:variant (e.g. echodistill lora custom_diffusion)."),
            fmt: str = typer.Option("md", "--format", help="md | csv | json"), results: Path = RESULTS,
            profile: Optional[str] = typer.Option(None, "--profile", help="Only records of this profile."),
            view: Optional[str] = typer.Option(None, "--view", help="table (default: what the tables read) | final "
                                               "| a view name (e.g. teacher).")) -> None:
    """Paired per-concept differences of the first method against each other one: mean, interval, p, wins."""
    from bench.compare import compare_command

    typer.echo(compare_command(methods, results, profile, fmt, view), nl=False)


@app.command()
def report(out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.md, report.html, figures/ "
                                                                  "(default: RESULTS/report)."),
           results: Path = RESULTS, profile: Optional[str] = typer.Option(None, "--profile"),
           data: Optional[Path] = DATA, dataset: Optional[str] = DATASET) -> None:
    """Every table, figures and qualitative grids in one Markdown file and one self-contained HTML page."""
    from bench.data import dataset_root
    from bench.report import build_report

    typer.echo(build_report(results, out, profile, dataset_root(data, dataset)))


@app.command()
def generate(run_dir: Path = typer.Option(..., "--run", help="A finished run folder."),
             prompt: str = typer.Option(..., "--prompt", help='e.g. "a <new1> dog on the moon"'),
             steps: Optional[int] = typer.Option(None, "--steps"), seed: int = typer.Option(0, "--seed"),
             out: Path = typer.Option(Path("generated.png"), "--out"), device: Optional[str] = DEVICE,
             weights: Optional[list[str]] = typer.Option(None, "--weights", help="Local weights, GROUP=PATH "
                                                         "(repeatable); default: those the run was trained with."),
             data: Optional[Path] = typer.Option(None, "--data", help="Dataset root, for the class noun in hints "
                                                 "(else $BENCH_DATA, else ./data/dreambench).")) -> None:
    """Load a trained run (with the weights it was trained with) and write one image."""
    from bench.generate import generate_image

    generate_image(run_dir, prompt, steps, seed, out, device, weights or [], data)
    typer.echo(str(out))


@app.command()
def perf(methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated (default: every method)."),
         profile: str = typer.Option("tiny", "--profile",
                                     help="paper-random (full size, random weights) | tiny | paper"),
         resolution: Optional[int] = typer.Option(None, "--resolution", help="Pixels (default: the profile's)."),
         batch: int = typer.Option(2, "--batch", help="Training batch size."),
         warmup: int = typer.Option(2, "--warmup", help="Untimed warm-up iterations."),
         iterations: int = typer.Option(5, "--iterations", help="Timed iterations."),
         sweep_batch: int = typer.Option(25, "--sweep-batch", help="Batch for the batched-latency figure."),
         device: Optional[str] = DEVICE, data: Optional[Path] = DATA, weights: Optional[list[str]] = WEIGHTS,
         out: Path = typer.Option(Path("results/perf"), "--out", help="Where the perf record and table go."),
         speed: Optional[list[str]] = SPEED,
         speed_sweep: bool = typer.Option(False, "--speed-sweep", help="Measure the default speed settings, then "
                                          "each switch flipped on its own; report each one's effect as a ratio."),
         score_images: Optional[int] = typer.Option(None, "--score-images", help="Also time scoring this many "
                                                    "images in one pass (default: 3000 on a GPU, 0 = skip on a CPU).")
         , threads: Optional[int] = THREADS) -> None:
    """Seconds per training iteration, phase shares, FLOPs, peak memory and latency, per method."""
    from bench.models.profiles import parse_weights
    from bench.paths import data_root
    from bench.perf import run_perf
    from bench.registry import method_names
    from bench.threads import set_override

    set_override(threads)

    names = methods.split(",") if methods else method_names()
    from bench.models.speed import parse_speed

    path, text = run_perf(names, profile, resolution, batch, warmup, iterations, sweep_batch, device,
                          data_root(data), out, parse_weights(weights or []), parse_speed(speed), speed_sweep,
                          score_images)
    typer.echo(text)
    typer.echo(f"written: {path}", err=True)


@app.command("check-method")
def check_method(name: str = typer.Argument(..., help="A registered method (built in, an entry point, or --include)."),
                 data: Optional[Path] = typer.Option(None, "--data", help="Check on this dataset's concept "
                                                     "(default: a synthetic two-photo concept)."),
                 concept: str = typer.Option("dog", "--concept", help="The dataset concept, with --data.")) -> None:
    """Run the method contract on the tiny profile (CPU): declarations, train, sample, save, load."""
    from bench.contract_check import ContractViolation
    from bench.contract_check import check_method as run_checks

    chosen = None
    if data is not None:
        from bench.data import select_concepts

        chosen = select_concepts(data, concept)[0]
    try:
        run_checks(name, chosen, say=typer.echo)
    except ContractViolation as err:
        typer.echo(f"FAIL {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name} follows the method contract")


def main() -> None:
    try:
        from bench import plugins, registry

        sys.argv, included = plugins.take_include_args(sys.argv)
        if included:
            plugins.include(included, registry.METHODS)
        app()
    except BenchError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (InfraError, OSError, RuntimeError) as err:  # the environment failed (disk, device): stop, keep the rest
        cause = infra_cause(err)
        if cause is None:
            raise
        hint = "" if "--resume" in cause else "; unfinished runs are kept and resumable (`bench run ... --resume`)"
        typer.echo(f"stopped: {cause}{hint}", err=True)
        sys.exit(EXIT_INFRA)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished runs are kept, unfinished ones will be redone", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
