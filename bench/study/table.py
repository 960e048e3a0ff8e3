"""Table 7 from a study's votes: preference rate per method with a 95% bootstrap interval, beside the paper's
numbers when the study has the paper's design (its four methods, so 4 candidates per trial and a 25% chance
level); a study of another design gets its own chance level and a line saying why the paper is not beside it.

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

PAPER_TABLE7 = {"echodistill": 66.90, "custom_diffusion": 32.26, "cones2": 0.48, "disenbooth": 0.36}
"""The paper's Table 7 by registry name: share of votes (%) per method, from 15 participants and 840 annotations
(best of 4: one image of each method per group). Not in `reference/paper_tables.csv`, which has metric columns."""
PAPER_PARTICIPANTS = 15
PAPER_ANNOTATIONS = 840
RESAMPLES = 2000
SEED = 0
CSV_COLUMNS = ("study", "method", "variant", "label", "votes", "preference_pct", "ci_low_pct", "ci_high_pct",
               "paper_preference_pct", "candidates_per_trial", "chance_pct", "annotations", "participants", "trials",
               "excluded")


@dataclass
class StudyRow:
    """One method's line of Table 7."""

    method: str
    """Method name in the registry."""
    variant: str
    """Its variant."""
    label: str
    """Name shown in the table: the method's declared label (`MethodOptions.label`), and the variant unless default."""
    votes: int
    """Votes it received."""
    rate: float | None
    """Share of all votes, in percent."""
    low: float | None
    """Lower end of the 95% bootstrap interval, in percent."""
    high: float | None
    """Upper end of the 95% bootstrap interval, in percent."""
    paper: float | None
    """The paper's share, in percent, when the study has the paper's design."""


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


def paper_design(pairs: list[tuple[str, str]]) -> bool:
    """True when the study compares exactly the paper's methods, each in its default variant."""
    return sorted(pairs) == sorted((m, "default") for m in PAPER_TABLE7)


def study_rows(votes: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[StudyRow]:
    """Table 7's rows: every compared (method, variant), most preferred first; the paper's share beside each only
    when the study has the paper's design."""
    from bench.contract import presentation

    same = paper_design(pairs)
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
                             PAPER_TABLE7[method] if same else None))
    rows.sort(key=lambda r: (-r.votes, r.label))
    return rows


def _label(method: str) -> str:
    from bench.contract import presentation

    return presentation(method).label


def design_note(pairs: list[tuple[str, str]]) -> str:
    """Why the paper's numbers are, or are not, beside this study's."""
    n = len(pairs)
    paper = ", ".join(_label(m) for m in PAPER_TABLE7)
    if paper_design(pairs):
        return (f"Same design as the paper's study (best of {len(PAPER_TABLE7)}: {paper}), so its shares are "
                f"beside this study's.")
    return (f"The paper's numbers are not shown: its study was best of {len(PAPER_TABLE7)} ({paper}; chance "
            f"{100 / len(PAPER_TABLE7):.0f}%), this one is best of {n} (chance {100 / n:.0f}%), and shares from "
            f"different designs cannot be compared. `bench study create` without --methods draws the paper's.")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_study(name: str, profile: str, votes: list[dict[str, Any]], pairs: list[tuple[str, str]], trials: int,
                 fmt: str, excluded: tuple[str, ...] = (), revoked: tuple[str, ...] = ()) -> str:
    """Table 7 as Markdown (caption, table, notes) or CSV. `excluded`: participants whose votes were left out;
    `revoked`: participants whose links were revoked (their votes count unless excluded)."""
    if fmt not in ("md", "csv"):
        raise BenchError(f"unknown format '{fmt}'; valid: md, csv")
    rows = study_rows(votes, pairs)
    people = len({v["participant"] for v in votes})
    n = len(pairs)
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
                             "candidates_per_trial": n, "chance_pct": f"{100 / n:.4f}", "annotations": len(votes),
                             "participants": people, "trials": trials, "excluded": ";".join(excluded)})
        return buf.getvalue()
    same = paper_design(pairs)
    caption = (f"Best of {n}: {n} candidates per trial, one per method (chance level {100 / n:.0f}%). "
               f"{len(votes)} annotations from {people} participant{'s' if people != 1 else ''} on {trials} "
               f"trials; preference = share of votes; 95% interval: bootstrap over participants and trials "
               f"({RESAMPLES} resamples, seed {SEED})."
               + (f" Paper: {PAPER_PARTICIPANTS} participants, {PAPER_ANNOTATIONS} annotations." if same else ""))
    notes = [design_note(pairs)]
    if excluded:
        notes.append(f"Left out (--exclude): the votes of {', '.join(excluded)}.")
    counted = sorted(set(revoked) - set(excluded))
    if counted:
        notes.append(f"Revoked links whose earlier votes are counted: {', '.join(counted)} (--exclude leaves them "
                     f"out).")
    if profile == "tiny":
        notes.append("Profile `tiny`: the images come from small random stand-in models; the table shows that the "
                     "study works, not how the methods compare.")
    head = "| Method | Votes | Preference (%) | 95% interval |" + (" Paper (%) |" if same else "")
    lines = [f"### Table 7: user preference study `{name}` (profile `{profile}`)", "", caption, "", head,
             "|---|---:|---:|---:|" + ("---:|" if same else "")]
    for r in rows:
        interval = "–" if r.low is None else f"[{r.low:.2f}, {r.high:.2f}]"
        lines.append(f"| {r.label} | {r.votes} | {_pct(r.rate)} | {interval} |" + (f" {_pct(r.paper)} |" if same
                                                                                    else ""))
    lines += ["", " ".join(notes)]
    if not votes:
        lines += ["", ("No votes yet: invite participants (`bench study invite`) and serve the study "
                       "(`bench study serve`).")]
    return "\n".join(lines) + "\n"
