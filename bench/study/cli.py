"""The `bench study` commands: create a preference study from finished runs, invite participants, serve the web
app, export the votes. (`bench table study` renders Table 7; it lives with the other tables in `bench.cli`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.api import BenchError
from bench.study.config import PAPER_METHODS

study_app = typer.Typer(no_args_is_help=True, help="A preference study (the paper's Table 7) over finished runs.")
RESULTS = typer.Option(Path("results"), "--results", help="Results root.")
PROFILE = typer.Option("tiny", "--profile", help="Model profile whose runs are compared: tiny | paper | paper-random.")
DATA = typer.Option(None, "--data", help="Dataset root (else $BENCH_DATA, else ./data/dreambench).")
DATASET = typer.Option(None, "--dataset", help="dreambench | customconcept101 (default: told by the --data folder).")
SEEDS = typer.Option("0", "--seeds", help="Training seeds, comma-separated (e.g. 0,1,2,3).")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{what} must be comma-separated integers, got '{text}'") from None


STUDY = typer.Option(None, "--study", help="Study name (default: the only study under --results).")
HOST = typer.Option(None, "--host", help="Address the links name (and `serve` listens on); default: the study's "
                    "(127.0.0.1, this machine only, unless set).")
PORT = typer.Option(None, "--port", help="TCP port the links name and `serve` listens on; default: the study's "
                    "(8000 unless set).")
EXCLUDE = typer.Option(None, "--exclude", help="Participants whose votes are left out, comma-separated (e.g. p03).")


@study_app.command("create")
def study_create(name: str = typer.Option(..., "--name", help="Study name, e.g. table7."),
                 methods: str = typer.Option(",".join(PAPER_METHODS), "--methods",
                                             help="Methods compared, comma-separated (default: the paper's four; "
                                                  "each trial shows one image of each)."),
                 variant: str = typer.Option("default", "--variant", help="One variant for all, or one per method."),
                 concepts: str = typer.Option("all", "--concepts", help="'all' (every concept every method finished)"
                                              " or a comma-separated list."),
                 seeds: str = SEEDS, profile: str = PROFILE, results: Path = RESULTS, data: Optional[Path] = DATA,
                 dataset: Optional[str] = DATASET,
                 trials: str = typer.Option("all", "--trials", help="Number of trials to draw, or 'all'."),
                 draw_seed: int = typer.Option(0, "--draw-seed", help="Seed of the draw and the candidate orders."),
                 per_trial: Optional[int] = typer.Option(None, "--per-trial", help="Most votes per trial (default: "
                                                         "every participant may vote on every trial)."),
                 references: int = typer.Option(3, "--references", help="Reference photos shown per trial."),
                 host: str = typer.Option("127.0.0.1", "--host", help="Address the links name."),
                 port: int = typer.Option(8000, "--port", help="Port the links name and `serve` listens on.")
                 ) -> None:
    """Draw trials from finished runs into results/<profile>/_studies/<name>.sqlite."""
    from bench.data import dataset_root
    from bench.study import commands
    from bench.study.config import StudyConfig

    names = [m.strip() for m in methods.split(",") if m.strip()]
    variants = [v.strip() for v in variant.split(",") if v.strip()]
    variants = variants * len(names) if len(variants) == 1 else variants
    picked = () if concepts.strip() == "all" else tuple(c.strip() for c in concepts.split(",") if c.strip())
    if trials.strip() != "all" and not trials.strip().isdigit():
        raise BenchError(f"--trials must be a positive number or 'all', got '{trials}'")
    from bench.naming import unknown
    from bench.registry import method_names

    for m in names:
        if m not in method_names():
            raise unknown("method", m, method_names())  # one line naming the valid methods
    cfg = StudyConfig(name, profile, tuple(names), tuple(variants), picked, tuple(_ints(seeds, "--seeds")),
                      None if trials.strip() == "all" else int(trials), draw_seed, per_trial, references)
    typer.echo(commands.create(results, cfg, dataset_root(data, dataset), host, port), nl=False)


@study_app.command("invite")
def study_invite(participants: int = typer.Option(0, "--participants", help="New participants to add."),
                 admin: bool = typer.Option(False, "--admin", help="Also print a new admin link (the old one stops)."),
                 study: Optional[str] = STUDY, profile: Optional[str] = typer.Option(None, "--profile"),
                 results: Path = RESULTS, host: Optional[str] = HOST, port: Optional[int] = PORT) -> None:
    """Add participants and print one personal link each, naming the address `serve` listens on."""
    from bench.study import commands

    links, note = commands.invite(commands.resolve_study(results, profile, study), participants, admin, host, port)
    typer.echo(links, nl=False)
    typer.echo(note, nl=False, err=True)


@study_app.command("revoke")
def study_revoke(participants: list[str] = typer.Argument(..., help="Participant labels, e.g. p03 p07."),
                 study: Optional[str] = STUDY, profile: Optional[str] = typer.Option(None, "--profile"),
                 results: Path = RESULTS) -> None:
    """Revoke participants' links (at once, even while serving); their votes stay in the database, marked."""
    from bench.study import commands

    labels = [x.strip() for p in participants for x in p.split(",") if x.strip()]
    typer.echo(commands.revoke(commands.resolve_study(results, profile, study), labels), nl=False)


@study_app.command("serve")
def study_serve(study: Optional[str] = STUDY, profile: Optional[str] = typer.Option(None, "--profile"),
                results: Path = RESULTS, host: Optional[str] = HOST, port: Optional[int] = PORT) -> None:
    """Serve the study's web app until Ctrl-C (votes are committed as they come; stopping loses none)."""
    from bench.study import commands
    from bench.study.app import serve

    path = commands.resolve_study(results, profile, study)
    host, port, warning = commands.serve_address(path, host, port)
    if warning:
        typer.echo(warning, err=True)
    if not commands.check_host(host):
        typer.echo(f"warning: listening on {host}: anyone who can reach this address and holds a link can vote",
                   err=True)
    ready = commands.preflight(path)
    commands.check_port(host, port)
    typer.echo(f"{ready}; serving on http://{host}:{port} (Ctrl-C stops)", err=True)
    serve(path, host, port)


@study_app.command("export")
def study_export(out: Optional[Path] = typer.Option(None, "--out", help="CSV file (default: print)."),
                 study: Optional[str] = STUDY, profile: Optional[str] = typer.Option(None, "--profile"),
                 results: Path = RESULTS, exclude: Optional[str] = EXCLUDE) -> None:
    """Every vote as CSV: participant, trial, prompt, the order shown, the chosen method and image (with its hash)."""
    from bench.study import commands

    path = commands.resolve_study(results, profile, study)
    typer.echo(commands.export(path, out, commands.parse_exclude(path, exclude)), nl=False)
