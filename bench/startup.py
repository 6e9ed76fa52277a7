"""Start-up to first paint of the wizard: `llmwizard` in a pseudo-terminal, timed until the first
screen's text appears on it, over several runs. Target: under 1 s.

    python bench/startup.py [--runs 7] [--size 120x36]

The clock starts before the process is spawned (interpreter start, imports and argument parsing
count) and stops when the preset list is on the terminal; the app is then quit with Ctrl+Q.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pty
import re
import select
import statistics
import struct
import sys
import time
from fcntl import ioctl
from termios import TIOCSWINSZ

MARKER = "No preset"                       # on the first screen once it has painted
_ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[@-_][0-?]*[ -/]*[@-~]?|\x1b\][^\x07]*\x07")


def first_paint(columns: int, rows: int, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command, as a user types it
        os.environ.update(TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
        os.execvp(sys.executable, [sys.executable, "-m", "llmwizard.wizard.cli"])
    ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    seen = ""
    elapsed = None
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536).decode("utf-8", "replace")
            except OSError:
                break
            if "\x1b[6n" in chunk or "\x1b[c" in chunk:  # answer terminal queries so nothing waits
                os.write(fd, b"\x1b[1;1R")
            seen += chunk
            if MARKER in _ANSI.sub("", seen):
                elapsed = time.perf_counter() - start
                break
    finally:
        try:
            os.write(fd, b"\x11")  # Ctrl+Q
            deadline = time.time() + 10
            while time.time() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                select.select([fd], [], [], 0.05)
                with contextlib.suppress(OSError):
                    os.read(fd, 65536)
            else:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        finally:
            os.close(fd)
    if elapsed is None:
        raise SystemExit(f"the first screen did not appear within {timeout:.0f} s")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", default="120x36")
    args = parser.parse_args()
    columns, rows = (int(part) for part in args.size.split("x"))
    first_paint(columns, rows)  # warm the file cache; not counted
    times = [first_paint(columns, rows) for _ in range(args.runs)]
    print(f"llmwizard start-up to first paint at {columns}x{rows}, {args.runs} runs:")
    print("  " + "  ".join(f"{t * 1000:.0f}" for t in times) + " ms")
    print(f"  median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms (target < 1000 ms)")


if __name__ == "__main__":
    main()
