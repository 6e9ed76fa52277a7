"""What the probe costs on this machine: the default run with and without `--probe`, side by side.

    python bench/probe_overhead.py [--repeats 2] [--max-steps N]

Runs `llmwizard --preset small-dataset --yes` (the default run of the embedded model on the
bundled data) with `--no-probe` and with `--probe`, alternating, each in a fresh directory, and
prints per variant the median wall time, the probe's own time (from the command's start to the
run's launch line, minus the same span without a probe) and that time as a share of the run
without a probe; then what the probe measured (probe.jsonl: expected and measured peak, seconds
per step, measured / predicted tokens per second).
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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-steps", type=int, help="shorten the training run")
    args = parser.parse_args()
    extra = ["--max-steps", str(args.max_steps)] if args.max_steps else []
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", COLUMNS="120")
    results: dict[str, list[tuple[float, float]]] = {"--no-probe": [], "--probe": []}
    probe_lines: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
        env["LLMWIZARD_CALIBRATION_DIR"] = str(Path(tmp) / "calibration")  # the user's store stays untouched
        for repeat in range(args.repeats):
            for flag in ("--no-probe", "--probe"):
                cwd = Path(tmp) / f"{flag.strip('-')}-{repeat}"
                cwd.mkdir()
                launched, total, run_dir = one_run(cwd, env, [flag, *extra])
                results[flag].append((launched, total))
                if flag == "--probe" and run_dir is not None and (run_dir / "probe.jsonl").is_file():
                    probe_lines += [json.loads(x) for x in (run_dir / "probe.jsonl").read_text().splitlines()]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# python bench/probe_overhead.py --repeats {args.repeats}"
          + (f" --max-steps {args.max_steps}" if args.max_steps else "")
          + f"  ({time.strftime('%Y-%m-%d')}, load {load:.2f})")
    print(f"the probe's overhead on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          "the default run (llmwizard --preset small-dataset --yes), CPU")
    base_launch = statistics.median(r[0] for r in results["--no-probe"])
    base_total = statistics.median(r[1] for r in results["--no-probe"])
    print(f"{'variant':<14}{'to launch s':>13}{'whole run s':>13}{'probe s':>10}{'share of run':>14}   runs")
    for flag, rows in results.items():
        launch = statistics.median(r[0] for r in rows)
        total = statistics.median(r[1] for r in rows)
        probe = launch - base_launch if flag == "--probe" else 0.0
        print(f"{flag:<14}{launch:>13.1f}{total:>13.1f}{probe:>10.1f}{probe / base_total:>14.0%}   {len(rows)}")
    print(f"whole-run difference: {statistics.median(r[1] for r in results['--probe']) - base_total:+.1f} s")
    for line in probe_lines:
        print(f"probe round {line['round']}: {line['verdict']}; expected peak {line['expected_peak'] / 2**20:.0f} MiB, "
              f"measured {line['measured_peak'] / 2**20:.0f} MiB ({line['memory_kind']}, "
              f"x{line['ratio_measured_to_expected']}); {line['step_s']:.2f} s/step on the longest rows padded to "
              f"max_length; tokens/s measured/predicted x{line['speed_ratio']}")


if __name__ == "__main__":
    main()
