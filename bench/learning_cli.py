"""`bench learns`: the learning check (`bench.learning`) of one or more methods, from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def learns(method: str = typer.Option(..., "--method", help="Method name(s), comma-separated; see `bench ls "
                                      "methods`."),
           concepts: str = typer.Option("dog,teapot,backpack", "--concepts", help="'all' or comma-separated names "
                                        "(the fast tier's three by default)."),
           data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (default: $BENCH_DATA, else "
                                               "./data/dreambench)."),
           iterations: int = typer.Option(10, "--iterations", help="Iterations per training stage (tiny's cap by "
                                          "default, at least 2); the reference is the method after one.")) -> None:
    """Does each method learn? On `tiny` (CPU): trained samples against the method's start (one step), or samples
    conditioned on the concept's photos against another concept's; MS-SWD to the photos as the model's VAE renders
    them. One line per method; exit 1 when a method moves fewer than 2/3 of the concepts closer."""
    from bench import learning
    from bench.api import BenchError
    from bench.contract import MethodInfo
    from bench.data import select_concepts
    from bench.paths import data_root
    from bench.registry import get_method

    names = list(dict.fromkeys(m.strip() for m in method.split(",") if m.strip()))
    if not names:
        raise BenchError("no method given; e.g. --method lora,custom_diffusion (see `bench ls methods`)")
    if iterations <= learning.START:
        raise BenchError(f"--iterations must be at least {learning.START + 1} (the reference is the method after "
                         f"{learning.START}), not {iterations}")
    classes = {name: get_method(name) for name in names}  # an unknown name: one line (exit 2), before any work
    root = data_root(data)
    chosen, everything = select_concepts(root, concepts), select_concepts(root, "all")
    if len(everything) < 2 and not all(MethodInfo.of(cls).trains for cls in classes.values()):
        raise BenchError(f"{root} holds one concept; a method without training is checked against another "
                         f"concept's photos")
    failed = []
    for name in names:
        report = learning.check_method(name, chosen, everything, iterations=iterations)
        typer.echo(f"{'ok  ' if report.passed else 'FAIL'} {report.line()}")
        if not report.passed:
            failed.append(name)
    typer.echo(f"{len(names) - len(failed)} of {len(names)} method(s) learn (measure: {learning.MEASURE} to the "
               f"photos as each model's VAE renders them; share needed: {learning.SHARE:.2f})", err=True)
    if failed:
        raise typer.Exit(1)
