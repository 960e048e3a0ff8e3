"""The paper's tables at real scale, split over N machines: the one script `.github/workflows/paper-tables.yml` runs.

    python tools/paper_tables.py [options] check                      the dataset and the weights are there
    python tools/paper_tables.py [options] matrix N                   `shards=[1,...,N]` (the workflow's matrix)
    python tools/paper_tables.py [options] estimate [--shards N]      the plan's runs, done, GPU-hours left
    python tools/paper_tables.py [options] shard K N [--resume]       run part K of N of every sweep of the plan
    python tools/paper_tables.py [options] pack DEST                  copy the records and loss logs (to upload)
    python tools/paper_tables.py [options] merge SRC... --into DEST   merge shards, then status, tables, report
    python tools/paper_tables.py [options] slurm N [--partition P ...]  the plan as one SLURM job array, then tables
    python tools/paper_tables.py [options] publish                   status, tables, report of one shared folder

The plan is the paper's: every method's main run, the Custom Diffusion step grid, nine component ablations of
EchoDistill, its NFE, teacher-first, one-shot and backbone variants (`pieces()`; `--pieces` picks some of them,
`--methods` replaces the main piece's methods). Each piece is what one `bench run` or `bench ablate` command would
run; `shard K N` splits the whole plan at once (`bench.shard`: the same split on every machine, runs that share a
training together, even across pieces) and runs this machine's part piece by piece, as `bench run --shard`
would. Finished runs are skipped, so running a shard again resumes it; with `--resume` (RESUME=1) an interrupted run
continues from its last checkpoint instead of starting over.

Options default to environment variables, so the workflow sets them once: PROFILE (paper), CONCEPTS (all),
SEEDS (0), RESULTS (results), DREAMBENCH (the dataset; else $BENCH_DATA), WEIGHTS (a folder of local weights,
laid out as the workflow file describes; passed as --weights on the paper profile), EXECUTOR (gpus), WORKERS.
Exit code: 0; 2 for a user mistake (one line, before any work); 3 when some runs failed (kept, listed by
`bench status`); 4 when the environment failed (disk, device: finished runs kept, running it again resumes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ABLATED = ("teacher", "discriminators", "id_loss", "mse_loss", "msswd_loss", "disc_dino1", "disc_dino2", "disc_clip",
           "ste")
"""The components the paper ablates (Tables 3 and 8), one `bench ablate --drop` each."""
CD_GRID = ("sd21", "train1000-infer1", "train1000-infer4", "train1000-infer25", "train1-infer4", "train4-infer1",
           "train4-infer4")
"""Custom Diffusion's train/inference step grid (Table 5)."""


@dataclass(frozen=True)
class Piece:
    """One sweep of the plan: a `bench run` (methods x named variants) or a `bench ablate` (flags)."""

    name: str
    command: str
    """run | ablate"""
    methods: tuple[str, ...] = ("echodistill",)
    variants: tuple[str, ...] = ("default",)
    """`run`: named variants."""
    ablate: dict = field(default_factory=dict)
    """`ablate`: drops, teacher_first, shots, nfe (as `bench.ablations.ablation_variants` takes them)."""
    backbone: str = "sd-turbo"

    def cli(self) -> list[str]:
        if self.command == "run":
            return ["run", "--method", ",".join(self.methods), "--variant", ",".join(self.variants)]
        args = ["ablate", "--method", self.methods[0]]
        args += [a for d in self.ablate.get("drops", ()) for a in ("--drop", d)]
        args += ["--teacher-first"] if self.ablate.get("teacher_first") else []
        args += ["--shots", str(self.ablate["shots"])] if self.ablate.get("shots") else []
        args += ["--nfe", self.ablate["nfe"]] if self.ablate.get("nfe") else []
        return args + (["--backbone", self.backbone] if self.backbone != "sd-turbo" else [])

    def variant_list(self) -> list:
        from bench.ablations import ablation_variants
        from bench.runs import variants_for

        if self.command == "run":
            return variants_for(list(self.methods), list(self.variants), {})
        return ablation_variants(list(self.ablate.get("drops", ())), bool(self.ablate.get("teacher_first")),
                                 self.ablate.get("shots"), self.ablate.get("nfe"), self.backbone)


def pieces(main_methods: list[str]) -> list[Piece]:
    """The paper's plan, in the order its sweeps run."""
    return [Piece("main", "run", tuple(main_methods)),
            Piece("cd_grid", "run", ("custom_diffusion",), CD_GRID),
            *[Piece(f"drop_{part}", "ablate", ablate={"drops": (part,)}) for part in ABLATED],
            Piece("nfe", "ablate", ablate={"nfe": "1,2,4"}),
            Piece("teacher_first", "ablate", ablate={"teacher_first": True}),
            Piece("shots1", "ablate", ablate={"shots": 1}),
            Piece("backbone", "ablate", backbone="hyper-sd15")]


def weight_flags(root: str | None, profile: str, piece: Piece) -> list[str]:
    """`--weights GROUP=PATH` for the local weights folder (paper profile only; tiny builds its models): every group
    the piece's methods use on its backbone (`bench.manifest`, derived from the methods and the profiles)."""
    from bench.manifest import weight_flags as flags

    return flags(root, piece.methods, piece.backbone) if profile == "paper" else []


def metric_weights_env(root: str | None, profile: str) -> dict[str, str]:
    """The metric backbones' local weights (scoring on the paper profile), unless already set."""
    if not root or profile != "paper":
        return {}
    return {"BENCH_WEIGHTS_METRIC_CLIP": str(Path(root) / "metrics" / "open_clip_model.safetensors"),
            "BENCH_WEIGHTS_METRIC_DINO": str(Path(root) / "metrics" / "dinov2" / "model.safetensors")}


def selected(args: argparse.Namespace) -> list[Piece]:
    from bench.registry import method_names

    plan = pieces(args.methods.split(",") if args.methods else method_names())
    if args.pieces == "all":
        return plan
    names = {p.name for p in plan}
    wanted = [n for n in args.pieces.split(",") if n]
    bad = [n for n in wanted if n not in names]
    if bad:
        from bench.api import BenchError

        raise BenchError(f"unknown piece '{bad[0]}'; valid: all, {', '.join(p.name for p in plan)}")
    return [p for p in plan if p.name in wanted]


def bench(argv: list[str], env: dict[str, str]) -> int:
    """Run one `bench` command with this interpreter (so the same installation), echoing it first. $BENCH_MODULE
    names another module to run as `bench` (the tests use `tests.fake_bench`, which adds a test-only method)."""
    print("+ bench " + " ".join(argv), flush=True)
    module = os.environ.get("BENCH_MODULE", "bench.cli")
    return subprocess.run([sys.executable, "-m", module, *argv], check=False, env={**os.environ, **env}).returncode


# --- subcommands ----------------------------------------------------------------------------------------------


def build_plan(args: argparse.Namespace, check_images: bool) -> list[tuple[Piece, list, object]]:
    """(piece, its planned runs, their context) for every selected piece; every user mistake fails here, before
    work."""
    from bench.runs import SweepRequest, prepare

    os.environ.update({k: v for k, v in metric_weights_env(args.weights, args.profile).items()
                       if k not in os.environ})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = []
    for piece in selected(args):
        weights = [w for w in weight_flags(args.weights, args.profile, piece) if w != "--weights"]
        request = SweepRequest(methods=tuple(piece.methods), variants=tuple(piece.variant_list()),
                               concepts=args.concepts, seeds=tuple(seeds), profile=args.profile,
                               backbone=piece.backbone, data=Path(args.data) if args.data else None,
                               results=Path(args.results), weights=tuple(weights))
        jobs, ctx = prepare(request, check_images=check_images)
        out.append((piece, jobs, ctx))
    return out


def guarded(step):
    """Run a step as `bench` runs a command: a user mistake is one line and exit 2; an environment failure (disk
    full, device error) is one line and exit 4, with finished runs kept."""
    def run(args: argparse.Namespace) -> int:
        from bench.api import BenchError, InfraError, infra_cause

        try:
            return step(args)
        except BenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except (InfraError, OSError, RuntimeError) as err:
            cause = infra_cause(err)
            if cause is None:
                raise
            print(f"stopped: {cause}; finished runs are kept, running the shard again resumes", file=sys.stderr)
            return 4
    return run


@guarded
def estimate(args: argparse.Namespace) -> int:
    """The whole plan's estimate in one table (and the N shards' reference costs with --shards N)."""
    from bench.estimate import estimate as estimate_jobs
    from bench.estimate import render
    from bench.models.loading import default_device
    from bench.shard import cost_summary, parse_shard, render_cost, shard_loads, shard_pieces
    from bench.timing import device_name

    part = parse_shard(args.shard) if args.shard else None
    device = device_name(default_device())
    plan = build_plan(args, check_images=False)
    pairs = [(jobs, ctx) for _, jobs, ctx in plan]
    loads = shard_loads(pairs, args.shards) if args.shards else None
    chosen = shard_pieces(pairs, *part) if part else [jobs for jobs, _ in pairs]
    rows, paid = [], set()  # a training shared by two sweeps is paid for once
    for (_, _, ctx), jobs in zip(plan, chosen):
        perf = [Path("results") / "perf", Path(args.results) / "perf"]
        rows += estimate_jobs(jobs, ctx, device, perf, paid)["rows"]
    total = {k: sum(r[k] for r in rows) for k in ("runs", "done", "failed", "left", "hours_left")}
    cost = cost_summary(pairs, args.shards or 1, args.job_limit_h, args.gpus_per_shard)
    result = {"device": device, "rows": rows, "total": total, **({"shards": loads} if loads else {}), "cost": cost}
    if args.format == "json":
        print(json.dumps(result, indent=1))
    elif args.summary:
        print(render_cost(cost), end="")
    else:
        print(render(result, loads) + "\n" + render_cost(cost), end="")
        over = [s["shard"] for s in cost["shards"] if s["over_limit"]] if args.shards else []
        for name in over:
            print(f"warning: shard {name} is over the {args.job_limit_h:g} h limit; use "
                  f"{cost['fits'] or 'more'} shards", file=sys.stderr)
    return 0


@guarded
def shard(args: argparse.Namespace) -> int:
    """Part K of N of the whole plan (split as one plan: trainings shared across sweeps stay together), sweep by
    sweep on this machine's executor; failed runs do not stop the others (exit 3 at the end)."""
    from bench.executors import ExecOptions, exit_code, run_jobs, summarize
    from bench.shard import shard_pieces

    if not 1 <= args.k <= args.n:
        print(f"error: bad shard {args.k} of {args.n}: K must be between 1 and N", file=sys.stderr)
        return 2
    options = ExecOptions(executor=args.executor, workers=args.workers)
    options.validate()
    plan = build_plan(args, check_images=True)
    for _, _, ctx in plan:  # runs of methods that do not train have no checkpoint: they are simply redone
        ctx.resume = args.resume
    mine = shard_pieces([(jobs, ctx) for _, jobs, ctx in plan], args.k, args.n)
    worst = 0
    for (piece, jobs, ctx), part in zip(plan, mine):
        if not part:  # an empty piece is not a mistake: the shard goes on with the next one
            print(f"piece {piece.name}: nothing in this shard ({args.k}/{args.n}; the plan's {len(jobs)} runs of it "
                  f"are in other shards)", flush=True)
            continue
        print(f"+ {piece.name} (bench {' '.join(piece.cli())}): shard {args.k}/{args.n}: {len(part)} of the "
              f"plan's {len(jobs)} runs", flush=True)
        outcome = run_jobs(part, ctx, options)
        print(summarize(outcome, ctx.results), file=sys.stderr, flush=True)
        worst = max(worst, exit_code(outcome))
    return worst


@guarded
def pack(args: argparse.Namespace) -> int:
    """Copy the committed runs' records and loss logs (not weights or images) from --results into DEST, laid out
    as a results folder: what a shard uploads for the merge job. With `--shard K/N`, only the runs shard K owns
    under the current plan (a run left there by another plan or another N is another shard's to publish), and
    DEST/shard.json lists them (`bench.merge.OWNERS`: the owner's copy wins a merge)."""
    from bench import store
    from bench.merge import OWNERS
    from bench.shard import owned_runs, parse_shard

    root, dest, count = Path(args.results), Path(args.dest), 0
    owned = None
    if args.shard:
        k, n = parse_shard(args.shard)
        owned = set(owned_runs([(jobs, ctx) for _, jobs, ctx in build_plan(args, check_images=False)], k, n))
    packed, skipped = [], 0
    for record in store.iter_records(root, args.profile):  # copied, not read: the JSON object is enough
        run_dir = Path(record["run_dir"])
        rel = run_dir.relative_to(root)
        if owned is not None and str(rel) not in owned:
            skipped += 1
            continue
        target = dest / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in ("record.json", "loss_log.jsonl"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, target / name)
        packed.append(str(rel))
        count += 1
    dest.mkdir(parents=True, exist_ok=True)
    if owned is not None:
        store.write_json_atomic(dest / OWNERS, {"shard": args.shard, "planned": len(owned), "runs": packed})
    note = f" ({skipped} not owned by shard {args.shard} under the current plan left out)" if skipped else ""
    print(f"packed {count} run records from {root} into {dest}{note}")
    return 0


def publish_coverage(args: argparse.Namespace, out: Path) -> str | None:
    """Which shards and how many runs the published tables miss: `coverage.md` under `out`, and the same section
    appended to every Markdown table and to the report. None when the plan cannot be built here (no dataset)."""
    from bench.api import BenchError
    from bench.merge import OWNERS
    from bench.shard import coverage, render_coverage

    packed: dict[int, int] = {}
    n = args.shards
    for src in map(Path, args.sources):
        try:
            owners = json.loads((src / OWNERS).read_text())
        except (OSError, ValueError):
            continue
        k, of = (int(x) for x in str(owners["shard"]).split("/"))
        n = n or of
        packed[k] = len(owners.get("runs") or [])
    try:
        plan = build_plan(args, check_images=False)
    except BenchError as err:
        print(f"coverage not computed: {err}", file=sys.stderr)
        return None
    rows, total = coverage([(jobs, ctx) for _, jobs, ctx in plan], n or 1, Path(args.into),
                           packed if packed else None)
    text = render_coverage(rows, total)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.md").write_text(text)
    for md in [*sorted((out / "tables").glob("*.md")), out / "report" / "report.md"]:
        if md.is_file():
            md.write_text(md.read_text().rstrip() + "\n\n" + text)
    print(text, end="")
    return text


def merge(args: argparse.Namespace) -> int:
    """Merge the shards into DEST, then its status, every table (Markdown and CSV) and the report under --out."""
    code = bench(["merge", *args.sources, "--into", args.into], metric_weights_env(args.weights, args.profile))
    return code or publish(args, Path(args.into), Path(args.out or Path(args.into) / "published"))


def publish(args: argparse.Namespace, into: Path, out: Path) -> int:
    """Status, every table (Markdown and CSV), the report and the coverage of the results folder `into`."""
    env = metric_weights_env(args.weights, args.profile)
    steps = [["status", "--results", str(into), "--profile", args.profile]]
    steps += [["table", "all", "--compare", "paper", "--format", fmt, "--results", str(into), "--profile",
               args.profile, "--out", str(out / "tables")] for fmt in ("md", "csv")]
    if not args.no_report:
        steps.append(["report", "--results", str(into), "--profile", args.profile, "--out", str(out / "report"),
                      *(["--data", args.data] if args.data else [])])
    for argv in steps:
        code = bench(argv, env)
        if code != 0:
            return code
    args.into, args.sources = str(into), getattr(args, "sources", [])
    publish_coverage(args, out)
    return 0


@guarded
def slurm(args: argparse.Namespace) -> int:
    """The whole plan on a SLURM cluster: one job array of N shard jobs into one shared results folder
    (`bench.cluster`), then (unless --no-wait) status, tables, report and coverage, as the CI merge job does."""
    from bench.cluster import ClusterOptions, ShardTask, forwarded, submit, wait

    build_plan(args, check_images=True)  # every user mistake here, before anything is queued
    opts = ClusterOptions(args.partition, args.time, args.gpus_per_job, args.cpus_per_job, args.mem, args.account,
                          tuple(args.sbatch or ()), args.cluster, args.parallel)
    env = {k: os.environ[k] for k in ("BENCH_MODULE", "PYTHONPATH", "HF_HUB_OFFLINE") if k in os.environ}
    task = ShardTask(str(Path(__file__).resolve()), forwarded(args), args.n, args.shard_executor, env)
    jobs = submit(task, opts, Path(args.results))
    ids = ", ".join(str(j.job_id) for j in jobs)
    print(f"submitted {len(jobs)} shard job(s) as one array ({ids}); logs in {Path(args.results) / '_slurm'}",
          flush=True)
    if args.no_wait:
        print("when they have ended: python tools/paper_tables.py [the same options] publish", flush=True)
        return 0
    codes = wait(jobs, 2.0 if args.cluster == "local" else 30.0)
    args.shards = args.n
    for k, code in enumerate(codes, start=1):
        print(f"shard {k}/{args.n}: exit {code}", flush=True)
    out = Path(args.out or Path(args.results) / "published")
    return publish(args, Path(args.results), out) or max(codes)


def publish_results(args: argparse.Namespace) -> int:
    """`publish`: status, tables, report and coverage of --results (after `slurm --no-wait`'s jobs ended)."""
    args.sources = []
    return publish(args, Path(args.results), Path(args.out or Path(args.results) / "published"))


@guarded
def check(args: argparse.Namespace) -> int:
    """The dataset decodes and every role the plan needs has its weights under --weights (paper profile), before
    any run: each missing one is a line naming the role and the folder expected (exit 1)."""
    if args.data:
        code = bench(["data", "check", args.data], {})
        if code != 0:
            return code
    from bench.manifest import manifest, missing

    if args.profile != "paper" or not args.weights:
        return 0
    lines = missing(args.weights, manifest([(p.methods, p.backbone) for p in selected(args)]))
    lines += [f"missing metric weights: expected {path}" for path in
              sorted(metric_weights_env(args.weights, args.profile).values()) if not Path(path).exists()]
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


def show_manifest(args: argparse.Namespace) -> int:
    """The runner layout of the plan's weights (`bench.manifest`): what the workflow file's header lists."""
    from bench.manifest import layout, manifest

    print("\n".join(layout(manifest([(p.methods, p.backbone) for p in selected(args)]))))
    print("$WEIGHTS/metrics/open_clip_model.safetensors (CLIP ViT-L/14-336), "
          "$WEIGHTS/metrics/dinov2/model.safetensors (the metrics' DINOv2)")
    return 0


@guarded
def matrix(args: argparse.Namespace) -> int:
    """`shards=[1, ..., N]` and `n=N`: lines for $GITHUB_OUTPUT, the workflow's shard matrix. `auto`: the smallest N
    whose largest shard fits the job limit on its GPUs (`bench.shard.fitting_shards`, the paper's timings)."""
    if args.n == "auto":
        from bench.shard import fitting_shards

        fit = fitting_shards([(jobs, ctx) for _, jobs, ctx in build_plan(args, check_images=False)],
                             args.job_limit_h * 3600, args.gpus_per_shard)
        if fit is None:
            print(f"error: no shard count fits the {args.job_limit_h:g} h limit: one training is longer; raise "
                  f"--job-limit-h", file=sys.stderr)
            return 2
        n = fit[0]
    elif args.n.isdigit() and int(args.n) >= 1:
        n = int(args.n)
    else:
        print(f"error: the number of shards must be an integer >= 1 or auto, got {args.n}", file=sys.stderr)
        return 2
    print(f"shards={json.dumps(list(range(1, n + 1)))}")
    print(f"n={n}")
    return 0


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="paper_tables.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=env("PROFILE", "paper"))
    p.add_argument("--concepts", default=env("CONCEPTS", "all"))
    p.add_argument("--seeds", default=env("SEEDS", "0"))
    p.add_argument("--results", default=env("RESULTS", "results"))
    p.add_argument("--data", default=env("DREAMBENCH"))
    p.add_argument("--weights", default=env("WEIGHTS"), help="local weights folder (paper profile)")
    p.add_argument("--pieces", default=env("PIECES", "all"), help="comma-separated piece names, or all")
    p.add_argument("--methods", default=env("METHODS"), help="methods of the main piece (default: every method)")
    p.add_argument("--job-limit-h", type=float, default=float(env("JOB_LIMIT_H", "70")),
                   help="hours a shard may run (the workflow's shard step: 70)")
    p.add_argument("--gpus-per-shard", type=int, default=int(env("GPUS_PER_SHARD", "1")),
                   help="GPUs each shard's runner has (its runs spread over them)")
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("check", help="the dataset and the weights are there")
    sub.add_parser("manifest", help="the weights the plan needs: the runner layout")
    pk = sub.add_parser("pack", help="copy records and loss logs into DEST")
    pk.add_argument("dest")
    pk.add_argument("--shard", default=None, help="K/N: only the runs shard K owns under the current plan")
    sub.add_parser("matrix", help="the shard matrix for N shards (or auto)").add_argument("n")
    e = sub.add_parser("estimate", help="runs, done and GPU-hours left for the plan")
    e.add_argument("--shards", type=int, default=None, help="also show how N shards split the plan")
    e.add_argument("--shard", default=None, help="only part K/N of the plan, e.g. 2/4")
    e.add_argument("--format", choices=("md", "json"), default="md")
    e.add_argument("--summary", action="store_true", help="only the cost in sentences (what the README quotes)")
    s = sub.add_parser("shard", help="run shard K of N")
    s.add_argument("k", type=int)
    s.add_argument("n", type=int)
    s.add_argument("--executor", default=env("EXECUTOR", "gpus"))
    s.add_argument("--workers", type=int, default=int(env("WORKERS", "0")) or None)
    s.add_argument("--resume", action="store_true", default=env("RESUME", "0") == "1",
                   help="continue interrupted runs from their last checkpoint (else they are redone)")
    m = sub.add_parser("merge", help="merge shard results, then status, tables and report")
    m.add_argument("sources", nargs="+")
    m.add_argument("--into", required=True)
    m.add_argument("--out", default=None, help="where tables/ and report/ go (default INTO/published)")
    m.add_argument("--no-report", action="store_true", help="tables only")
    m.add_argument("--shards", type=int, default=None, help="N, when no shard uploaded its shard.json")
    c = sub.add_parser("slurm", help="the whole plan as one SLURM job array of N shards, then the tables")
    c.add_argument("n", type=int, help="shards (array tasks)")
    c.add_argument("--partition", default=env("SLURM_PARTITION"))
    c.add_argument("--time", type=int, default=int(env("SLURM_TIME", "4320")), help="minutes per shard job")
    c.add_argument("--gpus-per-job", type=int, default=int(env("SLURM_GPUS", "1")))
    c.add_argument("--cpus-per-job", type=int, default=None)
    c.add_argument("--mem", default=env("SLURM_MEM"), help="memory per job, e.g. 64G")
    c.add_argument("--account", default=env("SLURM_ACCOUNT"))
    c.add_argument("--sbatch", action="append", help="extra sbatch option KEY=VALUE (repeatable), e.g. qos=high")
    c.add_argument("--parallel", type=int, default=None, help="at most this many shard jobs at once")
    c.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="local: the same job array on this machine (submitit's LocalExecutor)")
    c.add_argument("--shard-executor", default="gpus", help="how a job runs its shard (gpus: one worker per GPU)")
    c.add_argument("--no-wait", action="store_true", help="submit and return; `publish` once the jobs ended")
    c.add_argument("--no-report", action="store_true", help="tables only")
    c.add_argument("--out", default=None, help="where tables/ and report/ go (default RESULTS/published)")
    c.add_argument("--shards", type=int, default=None, help=argparse.SUPPRESS)
    pb = sub.add_parser("publish", help="status, tables, report and coverage of --results (one shared folder)")
    pb.add_argument("--no-report", action="store_true", help="tables only")
    pb.add_argument("--out", default=None, help="where tables/ and report/ go (default RESULTS/published)")
    pb.add_argument("--shards", type=int, default=None, help="N of the plan's shards, for the coverage table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.environ.get("BENCH_MODULE"):  # e.g. tests.fake_bench: registers a test-only method on import
        importlib.import_module(os.environ["BENCH_MODULE"])
    steps = {"check": check, "matrix": matrix, "pack": pack, "estimate": estimate, "shard": shard, "merge": merge,
             "slurm": slurm, "publish": publish_results, "manifest": show_manifest}
    return steps[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
