"""Figures for the main command: how fast `llmwizard` answers and trains on this machine.

    python bench/main_command.py [--repeats 3] [--max-steps N]

Prints, side by side:
- `llmwizard --help` wall time (median of repeats): nothing heavy may be imported for it;
- `llmwizard plan` cold wall time (a fresh cache, so the embedded model is built too);
- `llmwizard --preset small-dataset --yes`: seconds from start to the first loss on screen, and
  to the end of the whole default run, each from a fresh directory and a fresh cache;
- what each run learned: the summary's loss and held-out exact-answer lines.
The first loss is timed when its line appears on the command's (piped, so plain-line) output.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def main_run(cwd: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float, str]:
    """(seconds to the first loss line, seconds to exit, the summary's loss and held-out lines)."""
    start = time.perf_counter()
    proc = subprocess.Popen(["llmwizard", "--preset", "small-dataset", "--yes", *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    first = None
    summary = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None and line.startswith("step ") and " loss " in line:
            first = time.perf_counter() - start
        if line.strip().startswith(("│ loss", "│ held-out")):
            summary += ("\n  " if summary else "") + line.strip(" │\n")
    code = proc.wait()
    total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"llmwizard exited with {code}")
    return first if first is not None else float("nan"), total, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, help="shorten the training run")
    args = parser.parse_args()
    extra = ["--max-steps", str(args.max_steps)] if args.max_steps else []

    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = dict(os.environ, COLUMNS="100")
        help_times = [timed(["llmwizard", "--help"], base, env) for _ in range(max(3, args.repeats))]
        rows.append(("llmwizard --help", help_times))
        plan_times, first_times, total_times = [], [], []
        summaries = []
        for i in range(args.repeats):
            run_env = dict(env, LLMWIZARD_CACHE=str(base / f"cache-{i}"))
            work = base / f"work-{i}"
            work.mkdir()
            plan_times.append(timed(["llmwizard", "plan"], work, run_env))
            run_env["LLMWIZARD_CACHE"] = str(base / f"cache-run-{i}")
            first, total, summary = main_run(work, run_env, extra)
            first_times.append(first)
            total_times.append(total)
            summaries.append(summary)
        rows += [("llmwizard plan (cold cache)", plan_times),
                 ("main command: first loss shown", first_times),
                 ("main command: whole run", total_times)]

    print(f"llmwizard main command on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
          + (f", --max-steps {args.max_steps}" if args.max_steps else ", the default run"))
    print(f"{'what':<34}{'median s':>10}{'min s':>10}{'max s':>10}   runs")
    for name, values in rows:
        print(f"{name:<34}{statistics.median(values):>10.2f}{min(values):>10.2f}{max(values):>10.2f}   {len(values)}")
    for summary in summaries:
        print(f"  {summary}")


if __name__ == "__main__":
    sys.exit(main())
