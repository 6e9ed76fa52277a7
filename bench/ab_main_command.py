"""Two installs of llmwizard side by side: `plan` (cold cache) and the whole default run, alternated
A, B, A, B, ... so that both see the same machine load; the per-pair ratio B/A is the figure.

    python bench/ab_main_command.py --a /path/to/old/.venv/bin --b .venv/bin [--pairs 3]

Each side is the `bin` folder of a virtual environment holding one llmwizard install (an older
commit checked out elsewhere, say). Nothing is shared between runs: each gets a fresh cache and
working directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def timed(bin_dir: Path, *args: str) -> float:
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", LLMWIZARD_CACHE=cache)
        start = time.perf_counter()
        result = subprocess.run([str(bin_dir / "llmwizard"), *args], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{bin_dir}: llmwizard {' '.join(args)} exited {result.returncode}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="bin folder of the first install (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="bin folder of the second install")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    cases = {"llmwizard plan (cold cache)": ["plan"],
             "main command: whole run": ["--preset", "small-dataset", "--yes"]}
    print(f"A = {args.a}\nB = {args.b}\n{args.pairs} alternated pairs per row; seconds are medians")
    print(f"{'what':32} {'A s':>8} {'B s':>8} {'B/A per pair':>24} {'median B/A':>11}")
    for name, argv in cases.items():
        a_times, b_times = [], []
        for _ in range(args.pairs):
            a_times.append(timed(args.a, *argv))
            b_times.append(timed(args.b, *argv))
        ratios = [b / a for a, b in zip(a_times, b_times)]
        print(f"{name:32} {statistics.median(a_times):8.2f} {statistics.median(b_times):8.2f} "
              f"{' '.join(f'{r:.2f}' for r in ratios):>24} {statistics.median(ratios):11.2f}", flush=True)


if __name__ == "__main__":
    main()
