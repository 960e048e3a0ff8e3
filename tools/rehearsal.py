"""A rehearsal of the whole paper pipeline, through exactly the commands the workflow runs, with injected faults.

    python tools/rehearsal.py [--concepts all|N] [--shards 16] [--pieces all] [--methods M,...] [--work DIR]

On the `tiny` profile (everything offline, on CPU), each step is one call of `tools/paper_tables.py`, each shard a
separate process with its own results folder, as on N runners:

1. `estimate --shards N` and `matrix N` on the plan *without its last concept*;
2. round 1: every shard runs (`shard K N --resume`, as the workflow's shard step); one shard (the one with most
   runs) is killed (SIGKILL) once it has finished a run, and is packed anyway (`pack --shard K/N`, as the
   workflow's `always()` step does); the merge of round 1 must say which shard and how many runs are missing
   (`coverage.md`);
3. round 2, the workflow run again after the plan grew by a concept: every shard runs again (finished runs are
   skipped, the killed shard goes on, its interrupted run continued from its checkpoint; runs the grown plan moved
   to another shard are left out of the pack);
4. one run's record is copied into a second shard's pack with noise in the last digits of its metrics;
5. `merge` of every pack (status, every table, the report, the coverage), and the same plan unsharded on one
   machine (`shard 1 1`, in one process or `--reference-workers` worker processes, then `publish`);
6. the checks: the merged folder holds exactly the plan's runs (as many as `estimate` lists), every table is
   complete (every row's runs done, none failed or missing), and equal to the unsharded run's tables (timing
   columns aside); the noisy duplicate was reported and the owner's copy kept.

It prints the runs per shard of both rounds and the wall time; exit 0 when every check holds, 1 otherwise.
`make rehearsal` runs the whole plan (30 concepts, N = 16); tests/test_rehearsal.py a reduced one.
$BENCH_MODULE is passed on to the script (the fast test uses it to run every piece with a test-only method).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "paper_tables.py"


class Rehearsal:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.work = args, Path(args.work).resolve()
        self.failures: list[str] = []

    def call(self, concepts: str, results: Path, *step: str, capture: bool = True, **popen) -> subprocess.Popen:
        argv = [sys.executable, str(SCRIPT), "--profile", "tiny", "--concepts", concepts, "--seeds", "0",
                "--pieces", self.args.pieces, "--data", str(self.args.data), "--results", str(results), *step]
        argv[8:8] = ["--methods", self.args.methods] if self.args.methods else []
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, **popen)

    def run(self, concepts: str, results: Path, *step: str) -> str:
        proc = self.call(concepts, results, *step)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"rehearsal: `paper_tables.py {' '.join(step)}` exited {proc.returncode}:\n{out[-3000:]}")
        return out

    def check(self, ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            self.failures.append(what)

    def shards(self, concepts: str, round_dir: Path, n: int, kill: int | None = None) -> dict[int, int]:
        """Every shard as its own process (at most --parallel at once); `kill`: SIGKILL that shard once it has
        finished a run. {shard: its exit code} (-9 for the killed one)."""
        pending, running, codes = list(range(1, n + 1)), {}, {}
        while pending or running:
            while pending and len(running) < self.args.parallel:
                k = pending.pop(0)
                running[k] = self.call(concepts, self.work / f"shard-{k}", "shard", str(k), str(n), "--executor",
                                       "local", "--resume", capture=False, start_new_session=True)
            for k, proc in list(running.items()):
                if k == kill and proc.poll() is None and any((self.work / f"shard-{k}").rglob("record.json")):
                    os.killpg(proc.pid, signal.SIGKILL)  # the runner died mid-shard: only `always()` steps follow
                    proc.wait()
                if proc.poll() is not None:
                    codes[k] = proc.returncode
                    del running[k]
            time.sleep(0.5)
        for k in range(1, n + 1):  # the pack step runs whatever happened
            self.run(concepts, self.work / f"shard-{k}", "pack", str(round_dir / f"shard-{k}"), "--shard", f"{k}/{n}")
        return codes

    def main(self) -> int:
        start = time.time()
        a, n = self.args, self.args.shards
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        names = [c.name for c in _concepts(a.data, a.concepts)]
        grown, small = ",".join(names), ",".join(names[:-1])
        first = json.loads(self.run(small, self.work / "shard-1", "estimate", "--shards", str(n), "--format", "json"))
        matrix = self.run(small, self.work / "shard-1", "matrix", str(n))
        self.check(f"n={n}" in matrix, f"matrix {n}: {matrix.strip().splitlines()[0]}")
        kill = 1 + max(range(n), key=lambda s: first["shards"][s]["runs"])
        codes1 = self.shards(small, self.work / "packed-1", n, kill)
        self.check(codes1[kill] == -signal.SIGKILL and all(c == 0 for k, c in codes1.items() if k != kill),
                   f"round 1 (plan without {names[-1]}): shard {kill}/{n} killed midway, the others exit 0: {codes1}")
        self.run(small, self.work / "merged-1", "merge", *map(str, sorted((self.work / "packed-1").iterdir())),
                 "--into", str(self.work / "merged-1"), "--out", str(self.work / "published-1"), "--no-report",
                 "--shards", str(n))
        coverage1 = (self.work / "published-1" / "coverage.md").read_text()
        self.check(f"from shard(s) {kill}/{n}" in coverage1 and "**0 missing**" not in coverage1,
                   f"round 1's merge publishes what finished and names the killed shard {kill}/{n} as missing runs")
        plan = json.loads(self.run(grown, self.work / "shard-1", "estimate", "--shards", str(n), "--format", "json"))
        codes2 = self.shards(grown, self.work / "packed-2", n)
        self.check(all(c == 0 for c in codes2.values()), f"round 2 (plan grown by {names[-1]}): every shard exits 0")
        dup = self.duplicate_with_noise(self.work / "packed-2", n)
        out = self.run(grown, self.work / "merged", "merge", *map(str, sorted((self.work / "packed-2").iterdir())),
                       "--into", str(self.work / "merged"), "--out", str(self.work / "published"),
                       *(["--no-report"] if a.no_report else []), "--shards", str(n))
        self.check("numerical noise" in out and _metrics(self.work / "merged" / dup) == dup_owner_metrics(self, dup),
                   f"a duplicate of {dup} with noise in the last digits merges: the owner's copy kept")
        workers = ["--executor", "gpus", "--workers", str(a.reference_workers)] if a.reference_workers > 1 else \
            ["--executor", "local"]
        self.run(grown, self.work / "whole", "shard", "1", "1", *workers)
        self.run(grown, self.work / "whole", "publish", "--out", str(self.work / "whole-published"), "--no-report")
        self.final_checks(plan, n)
        self.print_shards(first, plan, n)
        print(f"wall time: {time.time() - start:.0f} s ({len(names)} concepts, {n} shards, parallel "
              f"{a.parallel}, pieces {a.pieces})", flush=True)
        if self.failures:
            print(f"rehearsal FAILED: {len(self.failures)} check(s)", flush=True)
        return 1 if self.failures else 0

    def duplicate_with_noise(self, packed: Path, n: int) -> str:
        """Copy one run of shard A's pack into shard B's with every metric changed in its last digits."""
        for k in range(1, n + 1):
            owned = json.loads((packed / f"shard-{k}" / "shard.json").read_text())["runs"]
            if owned:
                rel = owned[0]
                break
        other = packed / f"shard-{k % n + 1}" / rel
        shutil.copytree(packed / f"shard-{k}" / rel, other, dirs_exist_ok=True)
        record = json.loads((other / "record.json").read_text())
        record["metrics"] = {m: v * (1 + 3e-13) if isinstance(v, float) else v
                             for m, v in (record.get("metrics") or {}).items()}
        (other / "record.json").write_text(json.dumps(record))
        self.dup_source = packed / f"shard-{k}" / rel
        return rel

    def final_checks(self, plan: dict, n: int) -> None:
        merged = {str(p.parent.relative_to(self.work / "merged")) for p in (self.work / "merged").rglob("record.json")}
        whole = {str(p.parent.relative_to(self.work / "whole")) for p in (self.work / "whole").rglob("record.json")}
        self.check(merged == whole and len(merged) == plan["total"]["runs"],
                   f"the merged folder holds exactly the plan's {plan['total']['runs']} runs (merged {len(merged)})")
        sharded, unsharded = _tables(self.work / "published" / "tables"), _tables(self.work / "whole-published" /
                                                                                    "tables")
        rows = [r for t in sharded.values() for r in t if r.get("kind") == "measured"]
        complete = all(r["runs_done"] == r["runs_expected"] and r["runs_failed"] == "0" for r in rows)
        self.check(bool(rows) and complete, f"every table complete ({len(rows)} measured rows, all runs done)")
        self.check(sharded == unsharded, "every table equals the unsharded run's (timing columns aside)")
        coverage = (self.work / "published" / "coverage.md").read_text()
        self.check("**0 missing**" in coverage, "the coverage of the final merge: 0 runs missing")

    def print_shards(self, first: dict, plan: dict, n: int) -> None:
        print("\n| shard | runs, round 1 | runs, round 2 (plan grown) | packed, round 2 |\n|---|---:|---:|---:|")
        for k in range(1, n + 1):
            packed = json.loads((self.work / "packed-2" / f"shard-{k}" / "shard.json").read_text())
            print(f"| {k}/{n} | {first['shards'][k - 1]['runs']} | {plan['shards'][k - 1]['runs']} | "
                  f"{len(packed['runs'])} |")
        print(flush=True)


def dup_owner_metrics(rehearsal: Rehearsal, rel: str) -> dict:
    return _metrics(rehearsal.dup_source)


def _metrics(run: Path) -> dict:
    return json.loads((run / "record.json").read_text()).get("metrics") or {}


def _tables(folder: Path) -> dict[str, list[dict[str, str]]]:
    out = {}
    for path in sorted(folder.glob("*.csv")):
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        out[path.stem] = [{k: v for k, v in r.items() if "time" not in k} for r in rows]
    return out


def _concepts(data: Path, wanted: str) -> list:
    from bench.data import load_concepts

    concepts = load_concepts(data)
    if wanted == "all":
        return concepts
    if wanted.isdigit():
        return concepts[: int(wanted)]
    names = wanted.split(",")
    return [c for c in concepts if c.name in names]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rehearsal.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--concepts", default="all", help="all, a count (the first N) or names; the last one is the "
                                                    "concept the plan grows by")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--pieces", default="all")
    p.add_argument("--methods", default=None, help="methods of the main piece (default: every method)")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BENCH_DATA", "data/dreambench")))
    p.add_argument("--work", default="results/rehearsal")
    p.add_argument("--parallel", type=int, default=2, help="shard processes at once")
    p.add_argument("--reference-workers", type=int, default=1,
                   help="worker processes of the unsharded reference run (`--executor gpus --workers N`: on a "
                        "machine without a GPU, N CPU workers; 1: the local executor)")
    p.add_argument("--no-report", action="store_true", help="tables only (the report is the slowest step)")
    return Rehearsal(p.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
