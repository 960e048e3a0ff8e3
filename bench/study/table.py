"""Table 7 from a study's votes: preference rate per method with a 95% bootstrap interval, beside the paper.

The interval resamples participants and trials together (a two-way bootstrap): each resample draws participants
with replacement and trials with replacement, and a vote counts once per copy of its participant times once per
copy of its trial. It is wider than a per-vote interval because votes by one person, or on one trial, are not
independent."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from bench.api import BenchError

PAPER_TABLE7 = (("EchoDistill", 66.90), ("Custom Diffusion", 32.26), ("Cones 2", 0.48), ("DisenBooth", 0.36))
"""The paper's Table 7: share of votes (%) per method, from 15 participants and 840 annotations."""
PAPER_PARTICIPANTS = 15
PAPER_ANNOTATIONS = 840
RESAMPLES = 2000
SEED = 0
CSV_COLUMNS = ("study", "method", "variant", "label", "votes", "preference_pct", "ci_low_pct", "ci_high_pct",
               "paper_preference_pct", "annotations", "participants", "trials")


@dataclass
class StudyRow:
    """One method's line of Table 7."""

    method: str
    """Method name in the harness ('' for a paper-only row)."""
    variant: str
    """Its variant."""
    label: str
    """Name shown in the table (the paper's name where it has one)."""
    votes: int | None
    """Votes it received (None for a paper-only row)."""
    rate: float | None
    """Share of all votes, in percent."""
    low: float | None
    """Lower end of the 95% bootstrap interval, in percent."""
    high: float | None
    """Upper end of the 95% bootstrap interval, in percent."""
    paper: float | None
    """The paper's share, in percent, when the paper has this method."""


def bootstrap(participants: list[Any], trials: list[int], choice: list[int], n_methods: int,
              resamples: int = RESAMPLES, seed: int = SEED) -> tuple[list[float], list[float]]:
    """(2.5th, 97.5th) percentiles, per method index, of its vote share under the two-way bootstrap."""
    import numpy as np

    p = np.unique(participants, return_inverse=True)[1]
    t = np.unique(trials, return_inverse=True)[1]
    m = np.asarray(choice)
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(resamples):
        wp = np.bincount(rng.integers(0, p.max() + 1, p.max() + 1), minlength=p.max() + 1)
        wt = np.bincount(rng.integers(0, t.max() + 1, t.max() + 1), minlength=t.max() + 1)
        w = wp[p] * wt[t]
        if w.sum() > 0:
            shares.append(np.bincount(m, weights=w, minlength=n_methods) / w.sum())
    arr = np.asarray(shares) * 100.0
    return list(np.percentile(arr, 2.5, axis=0)), list(np.percentile(arr, 97.5, axis=0))


def study_rows(votes: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[StudyRow]:
    """Table 7's rows: every compared (method, variant), most preferred first, then the paper's other methods."""
    from bench.contract import presentation

    paper = dict(PAPER_TABLE7)
    index = {pair: i for i, pair in enumerate(pairs)}
    choice = [index[(v["method"], v["variant"])] for v in votes]
    if votes:
        low, high = bootstrap([v["participant"] for v in votes], [v["trial"] for v in votes], choice,
                              len(pairs))
    rows = []
    for i, (method, variant) in enumerate(pairs):
        label = presentation(method).label + ("" if variant == "default" else f" ({variant})")
        n = choice.count(i)
        rows.append(StudyRow(method, variant, label, n, 100.0 * n / len(votes) if votes else None,
                             low[i] if votes else None, high[i] if votes else None,
                             paper.get(label) if variant == "default" else None))
    rows.sort(key=lambda r: (-(r.votes or 0), r.label))
    shown = {r.label for r in rows}
    rows += [StudyRow("", "", label, None, None, None, None, pct) for label, pct in PAPER_TABLE7 if label not in shown]
    return rows


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_study(name: str, profile: str, votes: list[dict[str, Any]], pairs: list[tuple[str, str]], trials: int,
                 fmt: str) -> str:
    """Table 7 as Markdown (caption, table, note) or CSV."""
    if fmt not in ("md", "csv"):
        raise BenchError(f"unknown format '{fmt}'; valid: md, csv")
    rows = study_rows(votes, pairs)
    people = len({v["participant"] for v in votes})
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({"study": name, "method": r.method, "variant": r.variant, "label": r.label,
                             "votes": "" if r.votes is None else r.votes,
                             "preference_pct": "" if r.rate is None else f"{r.rate:.4f}",
                             "ci_low_pct": "" if r.low is None else f"{r.low:.4f}",
                             "ci_high_pct": "" if r.high is None else f"{r.high:.4f}",
                             "paper_preference_pct": "" if r.paper is None else r.paper,
                             "annotations": len(votes), "participants": people, "trials": trials})
        return buf.getvalue()
    caption = (f"{len(votes)} annotations from {people} participant{'s' if people != 1 else ''} on {trials} "
               f"trials; preference = share of votes; 95% interval: bootstrap over participants and trials "
               f"({RESAMPLES} resamples, seed {SEED}). Paper: {PAPER_PARTICIPANTS} participants, "
               f"{PAPER_ANNOTATIONS} annotations.")
    lines = [f"### Table 7: user preference study `{name}` (profile `{profile}`)", "", caption, "",
             "| Method | Votes | Preference (%) | 95% interval | Paper (%) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        interval = "–" if r.low is None else f"[{r.low:.2f}, {r.high:.2f}]"
        votes_cell = "not in this harness" if r.votes is None else str(r.votes)
        lines.append(f"| {r.label} | {votes_cell} | {_pct(r.rate)} | {interval} | {_pct(r.paper)} |")
    if not votes:
        lines += ["", ("No votes yet: invite participants (`bench study invite`) and serve the study "
                       "(`bench study serve`).")]
    return "\n".join(lines) + "\n"
