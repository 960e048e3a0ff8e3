"""The one-line error for a name that is not among the valid ones, with a close match suggested.

A leaf module (it imports only `bench.api`'s error type), so any module can word such an error without importing
the method registry or anything else."""

from __future__ import annotations

import difflib

from bench.api import BenchError


def did_you_mean(value: str, valid: list[str] | tuple[str, ...]) -> str:
    """` (did you mean 'dog'?)` when something in `valid` is close to `value`, else an empty string."""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, value: str, valid: list[str] | tuple[str, ...]) -> BenchError:
    """The one-line error for a name that is not among `valid`."""
    return BenchError(f"unknown {kind} '{value}'{did_you_mean(value, valid)}; valid: {', '.join(valid)}")
