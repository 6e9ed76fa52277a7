"""What the probe costs on this machine: the default run with and without `--probe`, side by side.

    python bench/probe_overhead.py [--repeats 2] [--short-steps 2]

The probe's cost does not depend on the run's length (one launch and 3 steps on the longest
rows), so it is measured on short runs and set against the whole default run: first
`llmwizard --preset small-dataset --yes --no-probe` (the default run of the embedded model on the
bundled data) once, whole; then pairs of short runs (`--max-steps N`) without and with `--probe`,
each in a fresh directory. Printed: the default run's time, the short runs' median time to the
run's launch line and to exit, the probe's time (the differences) as a share of the default run,
and what the probe measured (probe.jsonl: expected and measured peak, seconds per step, measured /
predicted tokens per second).
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


def one_run(cwd: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float, Path | None]:
    """(seconds to the run's launch line, seconds to exit, the run directory)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llmwizard.wizard.cli", "--preset", "small-dataset", "--yes",
                             *extra], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    launched = float("nan")
    run_dir = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Launching ") and launched != launched:
            launched = time.perf_counter() - start
        if line.startswith("Run directory:"):
            run_dir = cwd / line.split(":", 1)[1].strip()
    code = proc.wait()
    if code != 0:
        raise SystemExit(f"llmwizard exited with {code} ({extra})")
    return launched, time.perf_counter() - start, run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of short runs (with and without the probe)")
    parser.add_argument("--short-steps", type=int, default=2, help="optimizer steps of the short runs")
    args = parser.parse_args()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", COLUMNS="120")
    short = ["--max-steps", str(args.short_steps)]
    results: dict[str, list[tuple[float, float]]] = {"--no-probe": [], "--probe": []}
    probe_lines: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
        env["LLMWIZARD_CALIBRATION_DIR"] = str(Path(tmp) / "calibration")  # the user's store stays untouched
        cwd = Path(tmp) / "default"
        cwd.mkdir()
        _, default_s, _ = one_run(cwd, env, ["--no-probe"])
        for repeat in range(args.repeats):
            for flag in ("--no-probe", "--probe"):
                cwd = Path(tmp) / f"{flag.strip('-')}-{repeat}"
                cwd.mkdir()
                launched, total, run_dir = one_run(cwd, env, [flag, *short])
                results[flag].append((launched, total))
                if flag == "--probe" and run_dir is not None and (run_dir / "probe.jsonl").is_file():
                    probe_lines += [json.loads(x) for x in (run_dir / "probe.jsonl").read_text().splitlines()]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# python bench/probe_overhead.py --repeats {args.repeats} --short-steps {args.short_steps}"
          f"  ({time.strftime('%Y-%m-%d')}, load {load:.2f} at the end: a shared machine)")
    print(f"the probe's overhead on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, CPU")
    print(f"default run (llmwizard --preset small-dataset --yes --no-probe), whole: {default_s:.1f} s")
    print(f"short runs (--max-steps {args.short_steps}), median of {args.repeats}:")
    print(f"{'variant':<14}{'to launch s':>13}{'whole run s':>13}")
    for flag, rows in results.items():
        print(f"{flag:<14}{statistics.median(r[0] for r in rows):>13.1f}{statistics.median(r[1] for r in rows):>13.1f}")
    by_launch = statistics.median(r[0] for r in results["--probe"]) - statistics.median(r[0] for r in results["--no-probe"])
    by_total = statistics.median(r[1] for r in results["--probe"]) - statistics.median(r[1] for r in results["--no-probe"])
    print(f"probe time (difference to launch): {by_launch:.1f} s = {by_launch / default_s:.0%} of the default run")
    print(f"probe time (difference, whole short run): {by_total:.1f} s = {by_total / default_s:.0%} of the default run")
    for line in probe_lines:
        if not line.get("step_s"):
            print(f"probe round {line['round']}: {line['verdict']}: {line['reason']}")
            continue
        print(f"probe round {line['round']}: {line['verdict']}; expected peak {line['expected_peak'] / 2**20:.0f} MiB, "
              f"measured {line['measured_peak'] / 2**20:.0f} MiB ({line['memory_kind']}, "
              f"x{line['ratio_measured_to_expected']}); {line['step_s']:.2f} s/step on the longest rows padded to "
              f"max_length; tokens/s measured/predicted x{line['speed_ratio']}")


if __name__ == "__main__":
    main()
