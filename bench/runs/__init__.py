"""Runs: plan jobs (method x variant x concept x seed), skip what is done, execute one job, evaluate it, record it.

Where each part lives:
- `bench.runs.planning`: jobs, their resolved configs and hashes (config hash, training hash);
- `bench.runs.planned`: `prepare`, the checks made before any work, and the `PlannedRun`s it returns (each job
  resolved once, read by every later step), and where a planned run stands (`triage`);
- `bench.runs.execution`: `execute_job`, which executors (`bench.executors`) call in whatever process runs a job:
  skip, lock, train (or `prepare` for a method without training), sample, score, time, record;
- `bench.runs.evaluation`: the protocol's prompts x evaluation seeds sampled from a trained model and scored;
- `bench.runs.loss_log`: the run's JSONL loss log, kept across `--resume` attempts;
- `bench.runs.status`: `bench status`, for a results folder or a plan.

What a re-run does with each run (`execute_job`):
- done, same config hash: skipped (`--force` recomputes);
- failed, same config hash: kept as failed and reported, NOT retried: a failure (divergence, a bug) is a result
  and retrying it blindly would hide it or burn GPU hours. `--retry-failed` re-runs them;
- recorded with another config hash (the config, the code's EVAL_VERSION or the models changed): recomputed;
- locked by a live process (here, or elsewhere with a fresh heartbeat): left alone, reported `locked`;
- interrupted (a `.partial` left by a killed process): redone from scratch, or with `--resume` continued from
  the method's last checkpoint (same config hash only).

Runs that differ only in sampling-only config fields (`bench.config.SAMPLING_ONLY`: step counts, guidance) have
the same *training hash*. A run whose training hash matches a finished run of the same method, concept and seed
(any variant) is not trained again: its method loads that run's weights (`Method.load`) and samples them with its
own settings; the record names the source (`trained_from`) and carries its training time. `--force` retrains.
"""

from bench.runs.evaluation import evaluate, same_view_sampling
from bench.runs.execution import Outcome, execute_job, find_trained, git_commit, versions
from bench.runs.loss_log import JsonlLog, compact_loss_log
from bench.runs.planned import (
    PlannedRun,
    SweepRequest,
    Triage,
    check_no_training,
    plan_runs,
    prepare,
    triage,
)
from bench.runs.planning import (
    ATTEMPT,
    EVAL_VERSION,
    Context,
    Job,
    check_device,
    check_weight_paths,
    default_suite,
    hashed_config,
    job_hash,
    load_concept,
    named_variants,
    outdated_reason,
    plan,
    resolve_config,
    training_hash,
    variants_for,
)
from bench.runs.status import plan_status, status_report

__all__ = ["ATTEMPT", "EVAL_VERSION", "Context", "Job", "JsonlLog", "Outcome", "PlannedRun", "SweepRequest", "Triage",
           "check_device", "check_no_training", "check_weight_paths", "compact_loss_log", "default_suite", "evaluate",
           "execute_job", "find_trained", "git_commit", "hashed_config", "job_hash", "load_concept", "named_variants",
           "outdated_reason", "plan", "plan_runs", "plan_status", "prepare", "resolve_config", "same_view_sampling",
           "status_report", "training_hash", "triage", "variants_for", "versions"]
