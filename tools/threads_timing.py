"""CPU intra-op threads against speed: the tiny student UNet forward and VAE encode, and the full-size SD-Turbo
UNet forward (paper-random: the real architecture, random weights), each at 1 and 2 (or --threads) threads, on a
quiet machine and with one busy process beside it (`--busy`: a process spinning on one core for the duration).
This is the measurement behind `bench.threads`' rule. Timings: median of --repeat forwards after one warm-up.
With `--bench-run DATA`, also the wall time of `bench run --method custom_diffusion --concepts dog,cat,teapot
--profile tiny --threads N` (3 tiny runs: train, sample, score) into a fresh temporary results folder each time.

    python tools/threads_timing.py [--threads 1,2] [--repeat 5] [--busy] [--full] [--bench-run DATA]
                                   [--out results/perf/F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _median_ms(fn: Any, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _cases(full: bool) -> dict[str, Any]:
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    tiny = Models(get_profile("tiny"), "cpu")
    unet, vae = tiny.student_unet, tiny.vae
    side = tiny.latent_size
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    latents, pixels = torch.randn(1, 4, side, side), torch.randn(1, 3, tiny.resolution, tiny.resolution)
    cases = {"tiny unet forward": lambda: unet(latents, 999, text).sample,
             "tiny vae encode": lambda: vae.encode(pixels).latent_dist.mean}
    if full:
        big = Models(get_profile("paper-random"), "cpu").get_pristine("student_unet")
        big_latents, big_text = torch.randn(1, 4, 64, 64), torch.randn(1, 77, big.config.cross_attention_dim)
        cases["paper-random unet forward"] = lambda: big(big_latents, 999, big_text).sample
    return cases


def _bench_run_s(data: Path, threads: int) -> float:
    """Wall seconds of three tiny `bench run`s at `threads` threads, in a fresh process and results folder."""
    with tempfile.TemporaryDirectory(prefix="threads-timing-") as results:
        cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "custom_diffusion", "--concepts",
               "dog,cat,teapot", "--profile", "tiny", "--data", str(data), "--results", results,
               "--threads", str(threads)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="also time with one busy process beside it")
    parser.add_argument("--full", action="store_true", help="also the full-size SD-Turbo UNet (paper-random)")
    parser.add_argument("--bench-run", type=Path, metavar="DATA", help="also time 3 tiny `bench run`s on DATA")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    torch.set_grad_enabled(False)
    cases = _cases(args.full)
    rows = []
    for busy in ([False, True] if args.busy else [False]):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for name, fn in cases.items():
                for n in threads:
                    torch.set_num_threads(n)
                    ms = _median_ms(fn, args.repeat if "paper" not in name else max(2, args.repeat // 2))
                    rows.append({"case": name, "threads": n, "busy_neighbour": busy, "median_ms": round(ms, 2)})
                    print(f"{name:28s} threads={n} busy={busy!s:5s} {ms:10.1f} ms", flush=True)
            for n in threads if args.bench_run else []:
                seconds = _bench_run_s(args.bench_run, n)
                rows.append({"case": "bench run, 3 tiny runs", "threads": n, "busy_neighbour": busy,
                             "wall_s": round(seconds, 1)})
                print(f"{'bench run, 3 tiny runs':28s} threads={n} busy={busy!s:5s} {seconds:10.1f} s", flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    report = {"tool": "tools/threads_timing.py", "machine": platform.machine(), "processor": platform.processor(),
              "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "torch": torch.__version__, "load_average_before": os.getloadavg()[0], "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
