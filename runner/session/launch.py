"""Launching an exported run: `bash launch.sh` as a child in its own process group.

The child's stdin is closed, its output goes to `<run>/train.log`, and Python inside it is
unbuffered. Stopping sends SIGTERM to the whole group, then SIGKILL after a grace period. Not
every rank is in that group: torch's elastic agent (torchrun, and accelerate's multi-process
launch) starts each worker in a session of its own. The agent forwards SIGTERM to its workers,
but a SIGKILL'd agent cannot, so the launcher's whole process tree is noted before any signal
and every process in it is waited for and, past the grace period, killed. A free port is chosen
for each single-machine run, so two runs on one machine never collide.

Starting takes the run lock (llmwizard.runner.runlock), so no face can start a second trainer in
a directory where one still works; it is released when the launch is seen to end, stopped or
killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psutil

from llmwizard.autotune.errors import UserError
from llmwizard.runner import runlock

LOG_FILE = "train.log"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_run_dir(parent: Path, name: str) -> Path:
    """A fresh `<parent>/<name>-<timestamp>` that never reuses an existing directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            candidate = parent / (f"{name}-{stamp}" + (f"-{attempt + 1}" if attempt else ""))
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except PermissionError:
        pass
    except OSError as exc:
        raise UserError(f"Cannot create a run directory under {parent}: {exc.strerror}.", title="Output directory",
                        fix="Pass --output-dir with a directory you can write to.") from None
    if not os.access(parent if parent.exists() else parent.parent, os.W_OK):
        raise UserError(f"Output directory {parent} is not writable.", title="Output directory",
                        fix="Pass --output-dir with a directory you can write to.")
    raise UserError(f"Could not create a new run directory under {parent}.", title="Output directory",
                    fix="Remove old runs or pass another --output-dir.")


class Launch:
    """One running training job."""

    def __init__(self, run_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None,
                 single_machine: bool = True) -> None:
        self.run_dir = run_dir
        self.args = args or []
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env["PYTHONUNBUFFERED"] = "1"
        if single_machine and "MAIN_PROCESS_PORT" not in (env or {}):
            self.env["MAIN_PROCESS_PORT"] = str(free_port())
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.lock: runlock.RunLock | None = None
        self.notes: list[str] = []  # what taking the lock cleared (a stale lock)

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    def start(self) -> None:
        """Take the run lock (UserError when another run works here), then start launch.sh."""
        self.lock = runlock.acquire(self.run_dir)
        self.notes = list(self.lock.notes)
        try:
            log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it; closed after wait)
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                ["bash", "launch.sh", *self.args],
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: one signal reaches every rank
            )
            log.close()
            self.lock.set_launcher(self.process.pid)
        except BaseException:
            self._release()
            raise

    def poll(self) -> int | None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            self._release()
        return code

    def wait(self, timeout: float | None = None) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._release()
        return code

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM to the group, wait for every rank to save and exit, SIGKILL what outlives `grace`.

        Waiting for the launcher alone is not enough: accelerate's single-process launcher dies on
        SIGTERM at once while its worker is still writing the checkpoint, and elastic workers sit
        outside the group, so the whole process tree is waited for.
        """
        assert self.process is not None
        tree = self.process_tree()
        deadline = time.monotonic() + grace
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
        while self._alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._alive(tree):
            return self.kill(tree)
        return self.wait()

    def kill(self, tree: list[psutil.Process] | None = None) -> int:
        """SIGKILL to the whole group and to every process of the launcher's tree at once."""
        assert self.process is not None
        tree = (tree or []) + self.process_tree()
        self._signal(signal.SIGKILL)
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks the start time: a reused pid is left alone
        return self.wait()

    def process_tree(self) -> list[psutil.Process]:
        """Every live descendant of the launcher (ranks included, whatever their session)."""
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def _alive(self, tree: list[psutil.Process]) -> bool:
        assert self.process is not None
        return _group_alive(self.process.pid) or any(runlock.alive(process) for process in tree)

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def _group_alive(group: int) -> bool:
    """Any process of the group still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "(comm)": state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            return True
    return False
