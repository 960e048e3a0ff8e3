"""`bench data`: validate a dataset folder, or fetch a public dataset repository and validate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bench.api import BenchError

data_app = typer.Typer(no_args_is_help=True, help="Validate or fetch a DreamBench copy.")


@data_app.command("check")
def data_check(folder: Path = typer.Argument(..., help="A DreamBench copy, or your own concept folder.")) -> None:
    """Validate a dataset folder: prompts file, subjects, every image decodes."""
    from bench import data
    from bench.cc101 import check_customconcept101, find_cc101

    if find_cc101(folder) is not None and not (folder / "prompts_and_classes.txt").exists():
        typer.echo(json.dumps(check_customconcept101(folder), indent=1))
        return
    try:
        data.find_dataset(folder)
        summary = data.check_dataset(folder)
    except BenchError:
        if not folder.is_dir() or (folder / "dataset").exists() or (folder / "prompts_and_classes.txt").exists():
            raise
        summary = data.check_folder(folder)
    typer.echo(json.dumps(summary, indent=1))


@data_app.command("download")
def data_download(dest: Optional[Path] = typer.Argument(None, help="Where to put it (default: data/<dataset>)."),
                  url: Optional[str] = typer.Option(None, "--url", help="Repository URL (default: google/dreambooth, "
                                                    "or adobe-research/custom-diffusion)."),
                  dataset: str = typer.Option("dreambench", "--dataset", help="dreambench | customconcept101."),
                  images: Optional[Path] = typer.Option(None, "--images", help="customconcept101: its photos, "
                                                        "benchmark_dataset.zip or the unpacked folder.")) -> None:
    """Clone a public dataset repository (DreamBench, or CustomConcept101 plus its photos) and validate it."""
    from bench import cc101, data
    from bench.naming import unknown

    if dataset not in data.DATASETS:
        raise unknown("dataset", dataset, data.DATASETS)
    if dataset == "customconcept101":
        path = cc101.download_customconcept101(dest or Path("data/customconcept101"), url or cc101.CC101_URL, images)
        typer.echo(f"CustomConcept101 ready at {path}")
        return
    if images is not None:
        raise BenchError("--images is for --dataset customconcept101 only; DreamBench's photos are in its repository")
    path = data.download_dreambench(dest or Path("data/dreambench"), url or data.DREAMBENCH_URL)
    typer.echo(f"DreamBench ready at {path}")
