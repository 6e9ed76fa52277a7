"""Why a run failed, in plain words with the fix, and what can be done about it automatically.

`diagnose_failure` reads the part of train.log that one attempt wrote (and its exit status) and
recognises the failures people meet most: GPU out of memory, host out of memory, port in use,
more processes than GPUs, collective timeouts, a missing dataset column, a full disk. Only GPU
out-of-memory is recovered automatically (llmwizard.runner.session.engine re-plans with a smaller micro-batch);
`record_recovery` keeps the story in <run>/recovery.log. Checkpoint helpers read what the HF
Trainer wrote (trainer_state.json), so the summary can name the best and the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

RECOVERY_LOG = "recovery.log"
# A micro-batch halves at each retry: three retries reach 1/8 of the planned micro-batch, which
# covers a memory estimate that was off by 8x; beyond that the plan itself must change.
MAX_OOM_RETRIES = 3


@dataclass(frozen=True)
class Failure:
    kind: str        # cuda_oom | host_oom | killed | signal | port_in_use | duplicate_gpu |
    #                  collective_timeout | dataset_column | disk_full | user_error | unknown
    title: str
    message: str
    fix: str
    evidence: str    # the log line that gave it away ("" when only the exit status did)
    rank: int | None = None


# (kind, pattern, title, message, fix). Order matters: root causes before their symptoms (a rank
# that ran out of memory makes the others time out in their next collective).
_SIGNATURES: list[tuple[str, str, str, str, str]] = [
    ("cuda_oom",
     r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|HIP out of memory",
     "GPU out of memory",
     "A rank ran out of GPU memory: the micro-batch, sequence length or model states need more than the GPU has.",
     "Lower --micro-batch (the effective batch is kept by more accumulation), turn on --checkpointing, shorten "
     "--max-length, or shard more (--strategy fsdp / zero3, --offload optimizer)."),
    ("disk_full",
     r"No space left on device|ENOSPC|\[Errno 28\]|inline_container\.cc.*unexpected pos|"
     r"PytorchStreamWriter failed writing|file write failed",
     "Disk full",
     "Writing failed because the disk is full (checkpoints hold the weights and optimizer states).",
     "Free space on the disk that holds the run directory, or start the run with --output-dir on a larger "
     "disk; old run directories under ./runs can go."),
    ("duplicate_gpu",
     r"Duplicate GPU detected",
     "More processes than GPUs",
     "NCCL found two ranks on the same GPU: the run starts more processes than there are visible GPUs.",
     "Start one process per GPU: re-plan with --processes set to the GPU count, and check "
     "CUDA_VISIBLE_DEVICES lists distinct GPUs."),
    ("port_in_use",
     r"EADDRINUSE|[Aa]ddress already in use",
     "Port in use",
     "The rendezvous port was already taken, usually by another run still going on this machine.",
     "Stop the other run, or set a free port: MAIN_PROCESS_PORT=29501 bash launch.sh (llmwizard picks a free "
     "port for each launch, so another program took it in between)."),
    ("dataset_column",
     r"not in the dataset|Column .* not found|KeyError: '(text|messages|prompt|completion|conversations|"
     r"instruction|input|output|response|question|answer)'|The dataset has no usable field",
     "Dataset column missing",
     "The training data lacks a column the trainer needs.",
     "Give every row one of: messages, prompt + completion, instruction + output, question + answer, or text "
     "(`llmwizard plan --dataset FILE` checks a file before a run)."),
    ("killed",
     r"Signals\.SIGKILL|SIGKILL|exitcode\s*:\s*-9\b|Killed\s*$",
     "A rank was killed (SIGKILL)",
     "A training process was killed with SIGKILL (signal 9). The kernel's out-of-memory killer does that "
     "when RAM runs out, and so do `kill -9`, a scheduler's time or memory limit and container runtimes.",
     "If RAM ran out, the kernel log says so (`dmesg | grep -i 'killed process'`): then use fewer processes, "
     "no CPU offload or a smaller micro-batch. Otherwise continue from the last checkpoint with "
     "`llmwizard resume` (the command is below)."),
    ("collective_timeout",
     r"Watchdog caught collective operation timeout|collective operation timeout|NCCL.*[Tt]imeout|"
     r"[Tt]imed out waiting|DistStoreError.*[Tt]imed out|gloo.*[Tt]imed out",
     "Ranks stopped waiting for each other",
     "A collective (all-reduce, barrier) timed out: one rank hung or died, or the network between machines is "
     "blocked.",
     "Look for the first error above in train.log (another rank's crash is the usual cause). Across machines, "
     "check the firewall and NCCL_SOCKET_IFNAME; a slow first step can need a longer ddp_timeout."),
]
_USER_ERROR = re.compile(r"UserError: (?P<message>.+)")
# A rank's own UserError line: "llmwizard (rank 0, Disk full) UserError: ..." (llmwizard.runner.rank.train).
_RANK_USER_ERROR = re.compile(r"llmwizard \(rank (?P<rank>\d+), (?P<title>[^)]*)\) UserError: (?P<message>.+)")
# UserError titles that name a failure kind of their own: their words (the check that found it,
# with the numbers) win over the library errors the same cause could also produce.
_USER_ERROR_KINDS = {"Disk full": "disk_full"}
_RANK = re.compile(r"\[rank(\d+)\]|\brank\s*:\s*(\d+)|local_rank[=:]\s*(\d+)")


def diagnose_failure(log_text: str, exit_code: int | None, oom_kills: int | None = None) -> Failure | None:
    """The failure one attempt's log shows; None for a clean exit (warnings in a good run's log
    can mention the same words). `oom_kills`: how many processes the kernel's out-of-memory
    killer ended in this machine's cgroup during the attempt (see `oom_kill_count`; None where
    unknown); only that makes a SIGKILL a host out-of-memory."""
    if exit_code == 0:
        return None
    failure = _diagnose(log_text, exit_code)
    if failure is not None and failure.kind == "killed" and oom_kills == 0:
        return dataclasses.replace(failure, message=failure.message + " This machine's cgroup recorded no "
                                   "out-of-memory kill during the run, so it was not short of RAM.")
    if failure is not None and failure.kind == "killed" and oom_kills:
        return Failure("host_oom", "Out of host memory (killed)",
                       f"The kernel's out-of-memory killer ended {oom_kills} process(es) of this machine during the "
                       "run (the cgroup's oom_kill count rose): host RAM ran out.", HOST_OOM_FIX, failure.evidence,
                       failure.rank)
    return failure


HOST_OOM_FIX = ("Use less host RAM: fewer processes, no CPU offload or a smaller micro-batch; "
                "`dmesg | grep -i 'killed process'` names what was killed. Loading is the usual peak: "
                "fsdp_cpu_ram_efficient_loading loads once per machine.")


def _diagnose(log_text: str, exit_code: int | None) -> Failure | None:
    lines = log_text.splitlines()
    own = _own_failure(lines)
    if own is not None:
        return own
    for kind, pattern, title, message, fix in _SIGNATURES:
        regex = re.compile(pattern)
        for line in lines:
            if regex.search(line):
                return Failure(kind, title, message, fix, line.strip()[:300], _rank_of(line, lines))
    for index, line in enumerate(lines):
        match = _USER_ERROR.search(line)
        if match:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            fix = following.split("Fix:", 1)[1].strip() if "Fix:" in following else "See the message above."
            return Failure("user_error", "Bad input", match["message"].strip(), fix, line.strip()[:300])
    if exit_code in (-9, 137):
        kind, _, title, message, fix = next(entry for entry in _SIGNATURES if entry[0] == "killed")
        return Failure(kind, title, message, fix, f"exit status {exit_code}")
    signal_number = -exit_code if exit_code is not None and exit_code < 0 else (
        exit_code - 128 if exit_code is not None and 128 < exit_code < 160 else None)
    if signal_number:
        name = signal_name(signal_number)
        return Failure("signal", f"Stopped by a signal ({name})",
                       f"The launcher ended on signal {signal_number} ({name}), sent from outside the run "
                       "(a user, a scheduler or the system).",
                       "Continue from the last checkpoint with `llmwizard resume` (the command is below).",
                       f"exit status {exit_code}")
    ours = without_tracebacks(lines)  # the launcher's own exception (CalledProcessError, ...) is not the cause
    last = next((line.strip() for line in reversed(ours) if line.strip()), "")
    error = next((line.strip() for line in reversed(ours) if re.match(r"\s*\w+(\.\w+)*(Error|Exception):", line)),
                 last)
    message = f"The training process exited with status {exit_code}."
    return Failure("unknown", "Training failed", message + (f" Last error: {error[:300]}" if error else ""),
                   "Read train.log (its last lines are below, the full tracebacks are in the file); rerun with "
                   "`bash launch.sh` in the run directory to see the output directly.", error[:300])


def _own_failure(lines: list[str]) -> Failure | None:
    """A failure a rank found and named itself (see _USER_ERROR_KINDS), with its message and fix."""
    for index, line in enumerate(lines):
        match = _RANK_USER_ERROR.search(line)
        if match and match["title"] in _USER_ERROR_KINDS:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            fix = following.split("Fix:", 1)[1].strip() if "Fix:" in following else "See the message above."
            return Failure(_USER_ERROR_KINDS[match["title"]], match["title"], match["message"].strip(), fix,
                           line.strip()[:300], int(match["rank"]))
    return None


def signal_name(number: int) -> str:
    """SIGTERM for 15; a plain 'signal N' for numbers the platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def oom_kill_count(cgroup_root: Path = Path("/sys/fs/cgroup"),
                   self_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """How many processes the kernel's out-of-memory killer has ended in this process's memory
    cgroup (cgroup v2 memory.events, v1 memory.oom_control); 0 where neither can be read. Read it
    before a launch and after a failure: a rise means host RAM ran out during the run."""
    try:
        entries = [line.split(":", 2) for line in self_cgroup.read_text().splitlines()]
    except OSError:
        entries = []
    candidates = []
    for _, controllers, path in (e for e in entries if len(e) == 3):
        relative = path.lstrip("/")
        if controllers == "":
            candidates += [cgroup_root / relative / "memory.events", cgroup_root / "memory.events"]
        elif "memory" in controllers.split(","):
            candidates += [cgroup_root / "memory" / relative / "memory.oom_control",
                           cgroup_root / "memory" / "memory.oom_control"]
    for candidate in candidates:
        try:
            for line in candidate.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def _rank_of(line: str, lines: list[str]) -> int | None:
    for text in [line, *lines]:
        match = _RANK.search(text)
        if match:
            return int(next(group for group in match.groups() if group is not None))
    return None


def log_excerpt(log_text: str, failure: Failure | None, lines: int = 10) -> list[str]:
    """The log lines a failure panel shows: none for a recognised failure (its diagnosis and the
    evidence line say it; the tracebacks stay in train.log), else the last `lines` lines without
    tracebacks and launcher noise (see `without_tracebacks`). Progress-bar lines (carriage
    returns) are cut to their last state."""
    if failure is not None and failure.kind != "unknown":
        return []
    text = [line.rsplit("\r", 1)[-1] for line in log_text.splitlines()]
    return [line for line in without_tracebacks(text) if line.strip()][-lines:]


# A line torch's elastic agent or a launcher writes about the ranks, not about the failure.
_RANK_PREFIX = re.compile(r"^\[(?:default)?rank\d+\]:\s?")
_NOISE = re.compile(
    r"torch/distributed/elastic/|subprocess\.CalledProcessError: Command|"
    r"The following values were not passed to `accelerate launch`|^\s*`--\w+` was set to|"
    r"^To avoid this warning pass in values for each of the problematic parameters|"
    r"^During handling of the above exception, another exception occurred:|"
    r"^The above exception was the direct cause of the following exception:")


# A traceback frame, also in the middle of a line another rank was writing at the same time.
_FRAME = re.compile(r'File "[^"]*", line \d+')


def without_tracebacks(lines: list[str]) -> list[str]:
    """The lines of a log without Python tracebacks (the `Traceback (most recent call last):`
    header, `File "...", line N` frames and their source and ^^^ lines; the exception line that
    ends one stays) and without launcher noise: torch elastic's warnings and its
    ChildFailedError banner, accelerate's CalledProcessError and its defaults notice.

    Ranks write to one log at once, so their tracebacks interleave: once a traceback has begun,
    every indented line counts as one (an exception's own indented detail stays in train.log)."""
    out: list[str] = []
    in_traceback = False
    banner_rules = -1          # "=" rules seen in a ChildFailedError banner; -1 outside one
    for raw in lines:
        line = _RANK_PREFIX.sub("", raw)
        stripped = line.strip()
        if banner_rules >= 0:
            banner_rules += stripped.startswith("====")
            if banner_rules >= 2:
                banner_rules = -1
            continue
        if "ChildFailedError" in line:
            banner_rules = 0
            continue
        if "Traceback (most recent call last):" in stripped:  # also where two ranks' lines merged into one
            in_traceback = True
            continue
        if (in_traceback and line[:1].isspace()) or _FRAME.search(line) or _NOISE.search(line):
            continue
        out.append(raw)
    return out


def attempt_log(log_path: Path, offset: int) -> str:
    """What one attempt appended to train.log (attempts share the file)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def record_recovery(run_dir: Path, text: str) -> None:
    """Append one entry to <run>/recovery.log (what failed, what changed, where it resumed)."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(run_dir / RECOVERY_LOG, "a", encoding="utf-8") as f:
        f.write(f"{stamp}  {text}\n")


def read_recoveries(run_dir: Path) -> list[str]:
    try:
        return [line.rstrip() for line in (run_dir / RECOVERY_LOG).read_text(encoding="utf-8").splitlines()
                if line.strip()]
    except (OSError, UnicodeDecodeError):  # damaged: the report and `runs` name it (runner.after.runs.run_problems)
        return []


# ----------------------------------------------------------------------------- checkpoints

def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N directories, oldest step first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def trainer_state(checkpoint: Path) -> dict[str, object] | None:
    """A checkpoint's trainer_state.json as a mapping; None when it is missing or damaged (or not
    a file: reading a pipe put in its place would wait forever)."""
    path = checkpoint / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: without it (or with a damaged one, which
    resuming from would fail on), the checkpoint is not one to resume from."""
    return trainer_state(checkpoint) is not None


def set_aside_incomplete(output_dir: Path) -> list[Path]:
    """Rename checkpoints whose save was cut short (killed mid-save) so resuming skips them:
    the Trainer resumes from the highest-numbered checkpoint-N, complete or not."""
    moved = []
    for checkpoint in checkpoints(output_dir):
        if not is_complete(checkpoint):
            target = checkpoint.with_name(f"incomplete-{checkpoint.name}")
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            checkpoint.rename(target)
            moved.append(target)
    return moved


def last_checkpoint(output_dir: Path) -> Path | None:
    complete = [c for c in checkpoints(output_dir) if is_complete(c)]
    return complete[-1] if complete else None


@dataclass(frozen=True)
class BestCheckpoint:
    path: Path
    step: int | None
    metric: float | None


def best_checkpoint(run_dir: Path, output_dir: Path) -> BestCheckpoint | None:
    """The best checkpoint by eval loss, as the Trainer recorded it (only when it still exists)."""
    for checkpoint in reversed(checkpoints(output_dir)):
        state = trainer_state(checkpoint)
        if state is None:
            continue
        best, metric, step = state.get("best_model_checkpoint"), state.get("best_metric"), state.get("best_global_step")
        if not best or not isinstance(best, str) or "\0" in best:
            return None
        path = Path(best) if Path(best).is_absolute() else run_dir / best
        if not path.is_dir():
            return None
        metric = float(metric) if isinstance(metric, (int, float)) and not isinstance(metric, bool) else None
        return BestCheckpoint(path, step if isinstance(step, int) and not isinstance(step, bool) else None, metric)
    return None


def free_disk_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
