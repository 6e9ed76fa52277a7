"""Writing run files safely: the target directory checked first, every file staged beside its
target and renamed into place together, and filesystem faults said in words.

An export that dies half-way (a full disk, a quota, a file size limit) must not leave a 0-byte
sft_config.yaml that a later launch takes for a hand edit, and a path the kernel refuses (a
folder under /proc, a name over 255 bytes) must be named rather than end in a traceback. So each
file is first written in full to a temporary sibling and flushed to disk; only when every file is
written are they renamed over the old ones (a rename within one directory needs no space). On a
failure the temporaries are removed and the directory is as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path

from llmwizard.autotune.errors import UserError
from llmwizard.runner.checkpoint_space import TITLE as DISK_FULL_TITLE
from llmwizard.runner.checkpoint_space import existing_directory

TITLE = "Output directory"
# Kernel file systems that show the machine's state as files: nothing an export writes belongs there.
VIRTUAL_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "binfmt_misc", "efivarfs", "selinuxfs", "autofs", "hugetlbfs",
    "rpc_pipefs", "nsfs",
})
# Errors that mean "no room": the disk, the user's quota, or the process's file size limit (ulimit -f).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# The longest temporary name a stage adds to the directory's path (".manifest.json.XXXXXXXX.tmp" and
# the state folder), so a path that fits on its own still fits with the files written into it.
_LONGEST_ADDED = len("/.llmwizard/.manifest.json.xxxxxxxx.tmp")


def check_target(directory: Path, label: str = "run directory") -> None:
    """Refuse a directory no run can be written to, before anything is created: a name longer than
    its file system allows (the kernel would answer ENAMETOOLONG half-way through), a path over the
    system's limit, or a place on a kernel file system such as /proc or /sys. `label` names the
    input in the message (`--out`)."""
    absolute = Path(os.path.abspath(directory))
    existing = existing_directory(absolute)
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    for part in absolute.parts[1:]:
        size = len(os.fsencode(part))
        if size > name_max:
            shown = part if len(part) <= 40 else part[:40] + "..."
            raise UserError(f"{label} {directory}: the folder name {shown!r} is {size} bytes long; the file "
                            f"system at {existing} allows at most {name_max} bytes per name.", title=TITLE,
                            fix=f"Choose a shorter name for {label} (at most {name_max} bytes per folder name).")
    path_max = _pathconf(existing, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(absolute))) + _LONGEST_ADDED >= path_max:
        raise UserError(f"{label} {directory}: the path is {len(os.fsencode(str(absolute)))} bytes long; with "
                        f"the run files in it, it would pass the system's limit of {path_max} bytes.",
                        title=TITLE, fix=f"Choose a shorter path for {label}.")
    if absolute.exists() and not absolute.is_dir():
        raise UserError(f"{label} {directory} is a file, not a directory.", title=TITLE,
                        fix=f"Pass a new or empty directory to {label}.")
    mount, kind = file_system(existing)
    if kind in VIRTUAL_FILE_SYSTEMS:
        raise UserError(f"{label} {directory} is on {mount}, the kernel's {kind} file system, which shows the "
                        "machine's state as files and cannot hold a run.", title=TITLE,
                        fix=f"Choose a directory on a disk for {label}, e.g. runs/my-run.")


def file_system(path: Path) -> tuple[str, str]:
    """(mount point, file system type) of the existing `path`, from /proc/self/mounts; ("", "")
    where the system has no such table."""
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "", ""
    target = str(path)
    best = ("", "")
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = _unescape(fields[1])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):  # the longest match; a later mount covers an earlier one
            best = (mount, fields[2])
    return best


def fault(exc: OSError, path: Path, doing: str, directory: Path, *, unchanged: bool,
          existed: bool = True) -> UserError:
    """The words for a filesystem error while writing run files: the path, the OS error as the
    system says it, and what to do. `unchanged`: the directory was left as it was (`existed`:
    it was there before; else it was removed again)."""
    code = exc.errno or 0
    words = exc.strerror or str(exc)
    name = errno.errorcode.get(code, str(code))
    if not unchanged:
        outcome = f"{directory} may hold some of the new files; export again once this is fixed."
    elif existed:
        outcome = f"{directory} was left as it was."
    else:
        outcome = f"Nothing was created: {directory} does not exist."
    message = f"Could not {doing} {path}: {words} ({name}). {outcome}"
    if code in NO_ROOM:
        return UserError(message, title=DISK_FULL_TITLE,
                         fix=f"Free space on the disk that holds {directory} (or raise the quota or the file size "
                             "limit, `ulimit -f`), or write the run to a directory on another disk.")
    if code in NO_PERMISSION:
        return UserError(message, title=TITLE,
                         fix="Choose a directory you can write to (a read-only disk, or one another user owns, "
                             "will not do), or change its permissions.")
    if code == errno.EISDIR:
        move = shlex.join(["mv", str(path), f"{path}.old"])
        return UserError(message, title=TITLE, fix=f"Move {path} out of the way ({move}), then export again.")
    if code == errno.ENAMETOOLONG:
        return UserError(message, title=TITLE, fix="Choose a shorter directory name (at most 255 bytes per name).")
    return UserError(message, title=TITLE,
                     fix=f"Check that {path.parent} is a folder you can write to, or choose another directory.")


class StagedFiles:
    """Files written in full under temporary names beside their targets, then renamed into place
    together by `commit`, or removed by `discard`: a reader sees the old files or the new ones."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)

    @property
    def targets(self) -> list[Path]:
        return [target for _, target in self._staged]

    def write_text(self, target: Path, text: str, mode: int) -> Path:
        """Stage `text` for `target`; return the temporary path (to hash or read back)."""
        data = text.encode("utf-8")
        return self.write_with(target, lambda path: path.write_bytes(data), mode)

    def write_with(self, target: Path, writer: Callable[[Path], object], mode: int) -> Path:
        """Stage what `writer(path)` writes (a function that saves to a path, as Plan.save does)."""
        descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        temporary = Path(name)
        self._staged.append((temporary, target))
        os.close(descriptor)
        os.chmod(temporary, mode)
        writer(temporary)
        _flush_to_disk(temporary)
        return temporary

    def commit(self) -> None:
        """Rename every staged file over its target, in the order staged, then flush the folders."""
        folders = {target.parent for _, target in self._staged}
        while self._staged:
            temporary, target = self._staged[0]
            os.replace(temporary, target)
            self._staged.pop(0)
        for folder in folders:
            _flush_folder(folder)

    def discard(self) -> None:
        """Remove the temporaries not yet renamed (after a failure)."""
        for temporary, _ in self._staged:
            with contextlib.suppress(OSError):
                temporary.unlink()
        self._staged.clear()


def make_directories(directory: Path, created: list[Path]) -> None:
    """Create `directory` and its missing parents, appending each one made to `created` (outermost
    first) as it is made, so a failed export, even one that fails half-way here, can remove
    exactly what it added."""
    missing: list[Path] = []
    probe = Path(os.path.abspath(directory))
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # another process made it meanwhile: it is not ours to remove
        created.append(folder)


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost last in the list) where they are still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _flush_to_disk(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _flush_folder(folder: Path) -> None:
    """Make the renames durable; some file systems cannot sync a folder, which costs durability only."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError, AttributeError):
        return default
    return value if value and value > 0 else default


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field
