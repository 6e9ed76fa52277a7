"""Exports are exclusive and atomic, filesystem faults are named, and the cache fallback is private.

Real commands in subprocesses throughout: two exports racing for one directory, an export under a
file size limit (the kernel answers EFBIG past it, as a full disk answers ENOSPC), paths the kernel
refuses, and a fallback cache folder planted by "another user" in the temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmwizard.runner import runlock
from tests.conftest import run_cli
from tests.refusals import assert_refused, flat, snapshot

NOBODY = 65534  # a uid that is not the test's, for folders "another user" made (root only)


def _cli(*args: str, preexec_fn: Callable[[], None] | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """run_cli with a hook in the child before it starts (a resource limit)."""
    return subprocess.run([sys.executable, "-m", "llmwizard.wizard.cli", *args], capture_output=True, text=True,
                          check=False, timeout=600, env=dict(os.environ, COLUMNS="120", **(env or {})),
                          stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def _file_size_limit(size: int) -> Callable[[], None]:
    """In the child: writes past `size` bytes fail with EFBIG instead of killing it with SIGXFSZ."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def _consistent_export(directory: Path) -> dict:
    """The manifest, after checking that every file it lists holds what it recorded: all files
    come from one export (no mix of two plans), and no temporary or lock is left behind."""
    manifest = json.loads((directory / runlock.STATE_DIR / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name
    assert yaml.safe_load((directory / "plan.yaml").read_text())["max_steps"] == manifest["plan"]["max_steps"]
    leftovers = [p.name for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name == "export.lock"]
    assert leftovers == []
    assert all(p.stat().st_size > 0 for p in directory.rglob("*") if p.is_file())
    return manifest


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real export (max_steps 2), copied by each test that changes it."""
    directory = tmp_path_factory.mktemp("exported") / "run"
    result = run_cli("export", "--out", str(directory), "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    return directory


def _copy(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(exported, target)
    return target


# ----------------------------------------------------------------------------- exclusive

def test_two_exports_into_one_directory_at_once_one_wins_and_the_directory_holds_its_plan(tmp_path):
    out = tmp_path / "same"
    command = [sys.executable, "-m", "llmwizard.wizard.cli", "export", "--out", str(out), "--max-steps"]
    env = dict(os.environ, COLUMNS="120")
    racers = {steps: subprocess.Popen([*command, steps], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, stdin=subprocess.DEVNULL) for steps in ("3", "4")}
    outputs = {steps: process.communicate(timeout=600) for steps, process in racers.items()}
    results = {steps: (racers[steps].returncode, *output) for steps, output in outputs.items()}
    winners = [steps for steps, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    loser = next(steps for steps in results if steps not in winners)
    code, stdout, stderr = results[loser]
    message = assert_refused(subprocess.CompletedProcess([], code, stdout, stderr), [str(out)])
    # Held by the winner while it wrote (the lock), or already written when the loser looked.
    assert ("export lock" in message and str(out / runlock.EXPORT_LOCK_FILE) in message
            or "no longer empty" in message or "is not empty" in message), message
    assert "Wrote" not in stdout
    assert _consistent_export(out)["plan"]["max_steps"] == int(winners[0])


def test_an_export_while_another_holds_the_directory_is_refused_naming_the_lock(exported, tmp_path):
    out = _copy(exported, tmp_path)
    before = snapshot(out)
    with runlock.export_lock(out):  # this test process is the other export, mid-write
        result = run_cli("export", "--out", str(out), "--max-steps", "5", "--force")
    assert_refused(result, ["Another export", str(out / runlock.EXPORT_LOCK_FILE), f"pid {os.getpid()}",
                            "Nothing was written"])
    assert snapshot(out) == before
    assert not (out / runlock.EXPORT_LOCK_FILE).exists()  # released with its holder


def test_a_lock_left_by_a_killed_export_does_not_block_the_next(exported, tmp_path):
    """The kernel drops the lock with its holder: a lock file left behind (SIGKILL) is no lock, and
    the temporaries a killed export left are cleared."""
    out = _copy(exported, tmp_path)
    (out / runlock.EXPORT_LOCK_FILE).write_text("999999\n")
    (out / ".sft_config.yaml.abcd1234.tmp").write_text("half")
    result = run_cli("export", "--out", str(out), "--max-steps", "5", "--force")
    assert result.returncode == 0, result.stderr
    assert _consistent_export(out)["plan"]["max_steps"] == 5


# ----------------------------------------------------------------------------- atomic

@pytest.mark.parametrize("where", ["at the first file", "at the last file"])
def test_a_full_disk_leaves_an_existing_export_as_it_was(exported, tmp_path, where):
    """Writes past a size fail (EFBIG, as ENOSPC on a full disk): exit 2 with the path and the
    error in words; no 0-byte file, no temporary, every file as before."""
    out = _copy(exported, tmp_path)
    before = snapshot(out)
    sizes = {name: len(data) for name, data in before.items()}
    manifest = f"{runlock.STATE_DIR}/manifest.json"
    # The manifest is written last and is the largest file: a limit just above every other file fails it
    # after the run files were staged.
    limit = 64 if where == "at the first file" else max(v for k, v in sizes.items() if k != manifest) + 200
    assert sizes[manifest] > limit
    result = _cli("export", "--out", str(out), "--max-steps", "7", "--force", preexec_fn=_file_size_limit(limit))
    message = assert_refused(result, [str(out), "File too large", "EFBIG", "left as it was", "Free space"])
    assert (manifest in message) == (where == "at the last file")
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in exported.iterdir())


def test_a_full_disk_leaves_no_new_directory_behind(tmp_path):
    out = tmp_path / "new" / "run"
    result = _cli("export", "--out", str(out), "--max-steps", "2", preexec_fn=_file_size_limit(64))
    assert_refused(result, [str(out), "File too large", "Nothing was created"])
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_disk_leaves_the_export_as_it_was(exported, tmp_path):
    """A small tmpfs filled to the last block: ENOSPC, as on a real disk (root with mount only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        out = disk / "run"
        shutil.copytree(exported, out)
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
        before = snapshot(out)
        result = run_cli("export", "--out", str(out), "--max-steps", "7", "--force")
        assert_refused(result, [str(out), "No space left on device", "ENOSPC", "left as it was", "Free space"])
        assert snapshot(out) == before
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_an_unwritable_directory_is_named_with_the_os_error(exported, tmp_path):
    """A read-only mount refuses even root: a real one when mount works here, else skipped."""
    out = _copy(exported, tmp_path)
    before = snapshot(out)
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(out), str(out)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("bind mounts are not allowed here")
        out.chmod(0o555)
    try:
        result = run_cli("export", "--out", str(out), "--max-steps", "5", "--force")
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(out)], check=True)
        out.chmod(0o755)
    assert_refused(result, [str(out)])
    assert "Cannot write" in flat(result.stderr) or "Read-only file system" in flat(result.stderr)
    assert snapshot(out) == before


def test_a_folder_where_a_run_file_belongs_is_named_before_anything_moves(exported, tmp_path):
    out = _copy(exported, tmp_path)
    (out / "launch.sh").unlink()
    (out / "launch.sh").mkdir()
    before = snapshot(out)
    result = run_cli("export", "--out", str(out), "--max-steps", "5", "--force")
    assert_refused(result, [str(out / "launch.sh"), "EISDIR", "left as it was", "out of the way"])
    assert snapshot(out) == before and (out / "launch.sh").is_dir()


BAD_OUT = [
    ("/proc/llmwizard-run", ["--out", "/proc/llmwizard-run", "proc file system", "on a disk"]),
    ("/sys/llmwizard/run", ["--out", "/sys/llmwizard/run", "sysfs file system"]),
    ("{tmp}/" + "x" * 300, ["--out", "300 bytes long", "at most 255 bytes", "shorter name"]),
    ("{tmp}/" + "y" * 300 + "/run", ["--out", "300 bytes long", "at most 255 bytes"]),
    ("{tmp}/" + "/".join(["z" * 250] * 20), ["--out", "the system's limit", "shorter path"]),
]


@pytest.mark.parametrize(("out", "words"), BAD_OUT, ids=["proc", "sys", "long-name", "long-parent", "long-path"])
def test_paths_the_kernel_refuses_are_named(tmp_path, out, words):
    result = run_cli("export", "--out", out.format(tmp=tmp_path), "--max-steps", "2")
    assert_refused(result, words)
    assert list(tmp_path.iterdir()) == []
    assert not Path("/proc/llmwizard-run").exists()


# ----------------------------------------------------------------------------- the cache fallback

@pytest.fixture()
def shared_tmp(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose cache is unusable (a file) and whose temporary directory is the test's
    own, with the fallback path the tool would use there."""
    unusable = tmp_path / "cache-is-a-file"
    unusable.write_text("x")
    temporary = tmp_path / "tmp"
    temporary.mkdir(mode=0o700)
    env = {"LLMWIZARD_CACHE": str(unusable), "TMPDIR": str(temporary)}
    return env, temporary / f"llmwizard-cache-{os.getuid()}"


def _world_writable_folder(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    return path


def test_a_symlink_planted_at_the_fallback_is_refused_and_nothing_is_built_there(shared_tmp, tmp_path):
    env, fallback = shared_tmp
    planted = _world_writable_folder(tmp_path / "someone-elses")
    fallback.symlink_to(planted, target_is_directory=True)
    result = run_cli("plan", "--max-steps", "2", env=env)
    assert_refused(result, [str(fallback), "symbolic link", "LLMWIZARD_CACHE", "Nothing was built"])
    assert list(planted.iterdir()) == []
    assert fallback.is_symlink()  # left for the user to look at


@pytest.mark.parametrize(("mode", "words"), [(0o777, ["mode 777"]), (0o770, ["mode 770"]), (0o757, ["mode 757"])])
def test_a_fallback_others_can_write_to_is_refused(shared_tmp, mode, words):
    env, fallback = shared_tmp
    fallback.mkdir()
    fallback.chmod(mode)
    result = run_cli("plan", "--max-steps", "2", env=env)
    assert_refused(result, [str(fallback), "can be written by other users", *words, "LLMWIZARD_CACHE"])
    assert list(fallback.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a folder another user owns")
def test_a_fallback_another_user_owns_is_refused(shared_tmp):
    env, fallback = shared_tmp
    fallback.mkdir(mode=0o755)
    os.chown(fallback, NOBODY, NOBODY)
    result = run_cli("plan", "--max-steps", "2", env=env)
    assert_refused(result, [str(fallback), "belongs to another user", f"uid {NOBODY}"])
    assert list(fallback.iterdir()) == []


def test_a_fallback_in_a_world_writable_folder_without_the_sticky_bit_is_refused(shared_tmp):
    env, fallback = shared_tmp
    fallback.parent.chmod(0o777)
    result = run_cli("plan", "--max-steps", "2", env=env)
    fallback.parent.chmod(0o700)
    assert_refused(result, [str(fallback), "sticky bit"])


def test_a_missing_fallback_is_made_private_and_used(shared_tmp):
    env, fallback = shared_tmp
    result = run_cli("plan", "--max-steps", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert str(fallback) in result.stderr and "LLMWIZARD_CACHE" in result.stderr
    info = os.lstat(fallback)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert (fallback / "embedded").is_dir()
