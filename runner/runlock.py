"""One trainer per run directory: the run lock, the processes of a run, and stopping an orphan;
and one export at a time into a directory: the export lock (`export_lock`).

Two trainers in one directory overwrite each other's checkpoints and interleave their metrics,
so a launch takes `.llmwizard/lock.json` first (llmwizard.runner.session.launch.Launch.start does, so
every face gets it). The lock names the llmwizard process (pid and its start time), the
launcher's pid once started, the host, the boot and the directory. It is live while either
process still runs on this host and boot, or while a training process still works in the
directory (ranks outlive a launcher killed with SIGKILL, and `bash launch.sh` run by hand takes
no lock). Anything else is stale: the process is gone, the machine rebooted, the lock was made
on another host or was copied along with the directory; a stale lock is cleared with a note.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from llmwizard.autotune.errors import UserError

STATE_DIR = ".llmwizard"
LOCK_FILE = f"{STATE_DIR}/lock.json"
# Held while an export writes into the directory (see `export_lock`).
EXPORT_LOCK_FILE = f"{STATE_DIR}/export.lock"
# The per-rank entry every launcher starts (llmwizard.runner.export.scripts.train_arguments).
TRAIN_MODULE = "llmwizard.runner.rank.train"


@dataclass
class LockInfo:
    pid: int
    pid_started: float
    host: str
    boot_id: str
    started: str
    run_dir: str
    launcher_pid: int | None = None
    launcher_started: float | None = None


@dataclass
class RunLock:
    """A held lock; `notes` say what was cleared on the way (a stale lock)."""

    run_dir: Path
    owned: bool                  # False: this process already held it (a launch inside `llmwizard run`)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def set_launcher(self, pid: int | None) -> None:
        info = read_lock(self.run_dir)
        if info is None or info.pid != os.getpid():
            return
        info.launcher_pid = pid
        info.launcher_started = _started(pid) if pid else None
        _write_atomic(self.path, info, replace=True)

    def release(self) -> None:
        """Remove the lock if this process holds it; a launch inside a held lock only forgets its launcher."""
        if not self.owned:
            self.set_launcher(None)
            return
        info = read_lock(self.run_dir)
        if info is not None and info.pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def acquire(run_dir: Path) -> RunLock:
    """Take the run lock, or raise UserError naming the live run (exit code 2)."""
    run_dir = run_dir.resolve()
    path = run_dir / LOCK_FILE
    notes: list[str] = []
    for _ in range(5):  # another process may take or clear it between our looks
        info = read_lock(run_dir)
        if info is None and path.exists():
            notes.append(f"cleared an unreadable run lock ({path})")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if info is not None:
            if info.pid == os.getpid() and _same_process(info.pid, info.pid_started) and _here(info):
                return RunLock(run_dir, owned=False, notes=notes)
            live = live_pid(info, run_dir)
            if live is not None:
                raise already_running(run_dir, live)
            notes.append(f"cleared a stale run lock: {stale_reason(info, run_dir)}")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        orphans = train_processes(run_dir)
        if orphans:
            raise already_running(run_dir, orphans[0].pid)
        me = psutil.Process()
        mine = LockInfo(pid=me.pid, pid_started=me.create_time(), host=socket.gethostname(), boot_id=boot_id(),
                        started=datetime.now().astimezone().isoformat(timespec="seconds"), run_dir=str(run_dir))
        try:
            _write_atomic(path, mine, replace=False)
        except FileExistsError:
            continue
        return RunLock(run_dir, owned=True, notes=notes)
    raise UserError(f"Could not take the run lock of {run_dir}: other processes keep changing {LOCK_FILE}.",
                    title="Run directory", fix=f"Check what else is starting runs there: llmwizard status {shlex.quote(str(run_dir))}")


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[RunLock]:
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def export_lock(directory: Path) -> Iterator[Path]:
    """Hold the export lock of the existing `directory`, or raise UserError naming it (exit code 2).

    Two exports into one directory would interleave their files, and the one that finishes last
    would silently replace the other's plan; so an export holds `.llmwizard/export.lock` while it
    writes. It is an flock on that file: the kernel drops it when the holder exits, however it
    exits, so there is never a stale export lock to clear. The file is removed on release; a
    process that opened it just before then finds, once locked, that the path now names another
    file (or none) and tries again, so two holders can never each lock a different file."""
    path = directory / EXPORT_LOCK_FILE
    for _ in range(5):
        path.parent.mkdir(exist_ok=True)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # a failed export removed its empty state folder just now
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(descriptor)
            os.close(descriptor)
            raise export_in_progress(directory, holder) from None
        except OSError as exc:
            if exc.errno not in _NO_FILE_LOCKS:
                os.close(descriptor)
                raise
            break  # a file system that cannot lock (some FUSE mounts): exporting there beats refusing it
        if _names(path, descriptor):
            break
        os.close(descriptor)
    else:
        raise UserError(f"Could not take the export lock of {directory}: other processes keep replacing "
                        f"{EXPORT_LOCK_FILE}.", title="Output directory",
                        fix=f"Check what else writes to {directory}, then export again.")
    try:
        with contextlib.suppress(OSError):  # the holder's pid is for the message only
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(descriptor)


# flock's answers on a file system that has no locks.
_NO_FILE_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})


def export_in_progress(directory: Path, holder: int | None) -> UserError:
    who = f"llmwizard (pid {holder})" if holder else "another llmwizard"
    return UserError(f"Another export is writing to {directory}: {who} holds its export lock "
                     f"{directory / EXPORT_LOCK_FILE}. Nothing was written by this one.", title="Output directory",
                     fix=f"Let that export finish and look at {directory / 'plan.yaml'}; to write this plan as well, "
                         "export it to another directory.")


def _lock_holder(descriptor: int) -> int | None:
    try:
        return int(os.pread(descriptor, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _names(path: Path, descriptor: int) -> bool:
    """`path` still names the open file `descriptor` (it was not removed or replaced meanwhile)."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def already_running(run_dir: Path, pid: int) -> UserError:
    return UserError(f"Already running (pid {pid}): {run_dir} has a live training run.", title="Run directory",
                     fix=f"`llmwizard watch {shlex.quote(str(run_dir))}` to follow it, "
                         f"`llmwizard stop {shlex.quote(str(run_dir))}` to stop it.")


def read_lock(run_dir: Path) -> LockInfo | None:
    try:
        data: Any = json.loads((run_dir / LOCK_FILE).read_text(encoding="utf-8"))
        return LockInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def live_pid(info: LockInfo, run_dir: Path) -> int | None:
    """The pid that keeps the lock live (llmwizard, else the launcher, else a rank), or None: stale."""
    if not _here(info) or Path(info.run_dir) != run_dir.resolve():
        return None
    if _same_process(info.pid, info.pid_started):
        return info.pid
    if info.launcher_pid and _same_process(info.launcher_pid, info.launcher_started):
        return info.launcher_pid
    ranks = train_processes(run_dir)
    return ranks[0].pid if ranks else None


def stale_reason(info: LockInfo, run_dir: Path) -> str:
    if info.host != socket.gethostname():
        return f"taken on host {info.host}"
    if info.boot_id != boot_id():
        return "taken before this machine restarted"
    if Path(info.run_dir) != run_dir.resolve():
        return f"copied from {info.run_dir}"
    return f"pid {info.pid} (started {info.started}) is gone"


def train_processes(run_dir: Path) -> list[psutil.Process]:
    """Processes of a run, found without a lock: the launcher and ranks work in the run directory
    (launch.sh changes into it) and carry the training entry on their command line."""
    run_dir = run_dir.resolve()
    found = []
    for process in psutil.process_iter(["pid", "cwd", "cmdline"]):
        info = process.info
        if info["pid"] == os.getpid() or not info.get("cwd") or not info.get("cmdline"):
            continue
        if Path(info["cwd"]) == run_dir and TRAIN_MODULE in " ".join(info["cmdline"]):
            found.append(process)
    return sorted(found, key=lambda p: p.pid)


# ----------------------------------------------------------------------------- stopping an orphan

def stop_run(run_dir: Path, grace: float) -> tuple[bool, list[str]]:
    """Stop the run that works in `run_dir`: (anything was running, what was done).

    Its llmwizard process, when alive, gets SIGTERM and stops its ranks itself (checkpoint,
    summary, exit). Otherwise the launcher's process group gets SIGTERM as Launch.stop sends it
    (the elastic agent forwards it to ranks in their own sessions); ranks whose launcher is gone
    get it directly. Every rank saves a checkpoint at the end of its step; what outlives `grace`
    gets SIGKILL.
    """
    run_dir = run_dir.resolve()
    info = read_lock(run_dir)
    done: list[str] = []
    live = live_pid(info, run_dir) if info else None
    if info is not None and live is None:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / LOCK_FILE).unlink()
        done.append(f"cleared a stale run lock: {stale_reason(info, run_dir)}")
    if info is not None and live == info.pid and info.pid != os.getpid():
        done.append(f"sent SIGTERM to llmwizard (pid {info.pid}), which stops its ranks")
        with contextlib.suppress(psutil.Error):
            psutil.Process(info.pid).terminate()
        owner = _process(info.pid, info.pid_started)
        # Polled rather than psutil's wait: an exited llmwizard whose parent has not reaped it yet
        # (a zombie) has stopped, and wait() would sit out the whole period for it.
        deadline = time.monotonic() + grace + 15
        while owner is not None and alive(owner) and time.monotonic() < deadline:
            time.sleep(0.2)
    tree = _tree(info, run_dir)
    if not tree:
        return bool(done and live is not None), done
    launcher = _process(info.launcher_pid, info.launcher_started) if info and info.launcher_pid else None
    if launcher is not None:
        done.append(f"sent SIGTERM to the launcher's process group (pid {launcher.pid})")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launcher.pid, signal.SIGTERM)
    else:
        done.append("sent SIGTERM to the ranks (their launcher is gone): "
                    + ", ".join(f"pid {p.pid}" for p in tree))
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.2)
    left = [p for p in tree + _tree(info, run_dir) if alive(p)]
    if left:
        done.append(f"{len(left)} process(es) outlived {grace:g} s: sent SIGKILL")
        if launcher is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launcher.pid, signal.SIGKILL)
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks the start time: a reused pid is left alone
        psutil.wait_procs(left, timeout=10)
    info = read_lock(run_dir)
    if info is not None and live_pid(info, run_dir) is None:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / LOCK_FILE).unlink()
    return True, done


def _tree(info: LockInfo | None, run_dir: Path) -> list[psutil.Process]:
    processes: dict[int, psutil.Process] = {}
    launcher = _process(info.launcher_pid, info.launcher_started) if info and info.launcher_pid else None
    if launcher is not None:
        processes[launcher.pid] = launcher
        with contextlib.suppress(psutil.Error):
            processes.update({p.pid: p for p in launcher.children(recursive=True)})
    processes.update({p.pid: p for p in train_processes(run_dir)})
    return [p for p in processes.values() if alive(p)]


# ----------------------------------------------------------------------------- helpers

def boot_id() -> str:
    """This boot's id (Linux), else the boot time: a pid from before a restart means nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return str(int(psutil.boot_time()))


def _here(info: LockInfo) -> bool:
    return info.host == socket.gethostname() and info.boot_id == boot_id()


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _process(pid: int | None, started: float | None) -> psutil.Process | None:
    """The process `pid` if it is still the one that started at `started` (pids are reused)."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) > 1.0:
            return None
        return process if alive(process) else None
    except psutil.Error:
        return None


def _same_process(pid: int | None, started: float | None) -> bool:
    return _process(pid, started) is not None


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a finished child not yet reaped still shows up)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _write_atomic(path: Path, info: LockInfo, *, replace: bool) -> None:
    """Write the whole file under a temporary name, then link it in (fails if one exists) or
    replace it: a reader never sees half a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(info), indent=1) + "\n", encoding="utf-8")
    try:
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
