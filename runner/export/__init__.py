"""Exporters: pure functions from a Plan to the files a run is launched from.

    plan.yaml               the Plan itself; loads back into an equal Plan
    accelerate_config.yaml  accelerate's config (CPU, DDP, FSDP2 or DeepSpeed)
    ds_config.json          DeepSpeed ZeRO-2/3, "auto" wherever the HF Trainer fills the value
    sft_config.yaml         TRL's TrlParser format (ScriptArguments + SFTConfig + ModelConfig); a preference
                            or reward task's is dpo_, orpo_, kto_ or grpo_config.yaml, with its config class
    launch.sh               the exact command, runnable from anywhere: `bash launch.sh`
    slurm.sbatch            multi-node runs under Slurm
    README.txt              how to rerun
    .llmwizard/manifest.json  the sha256 of each file as exported, and the plan it was made from

plan.yaml is the source of truth: exporting again brings the other files in line with it, except
a file edited by hand, which is never overwritten silently (see `export_files`). An export is
exclusive (one at a time per directory) and atomic (all files or none), see `export_files`.
Nothing secret is written: hub tokens and tracker keys stay in the environment.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan
from llmwizard.runner import rundir
from llmwizard.runner import runlock
from llmwizard.runner.export.configs import (  # noqa: F401 (the exporters' public names, re-exported)
    DS_CONFIG,
    HOSTFILE,
    METRICS_FILE,
    OUTPUT_DIR,
    accelerate_config,
    deepspeed_config,
    fsdp_config,
    fsdp_environment,
    parallelism_environment,
    sft_config,
    task_keys,
    trl_config,
)
from llmwizard.runner.export.safe_files import StagedFiles, check_target, fault, make_directories, remove_empty
from llmwizard.runner.export.scripts import (  # noqa: F401
    IS_HOST,
    launch_command,
    launch_script,
    readme_text,
    slurm_script,
    train_arguments,
)


# The files a launch reads: an edit to one of these changes what trains.
LAUNCH_FILES = ("accelerate_config.yaml", DS_CONFIG, *rundir.TRL_CONFIGS, "launch.sh", "slurm.sbatch", HOSTFILE)
EDIT_CHOICES = ("refuse", "keep", "discard")


@dataclass
class ExportReport:
    """What an export did: the files written or kept in place, and notes for the user."""

    written: list[Path]
    notes: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)       # edited files left as they are (--keep-edits)
    set_aside: list[Path] = field(default_factory=list)  # edited files moved to NAME.edited-<time>


def render(plan: Plan, python: str | None = None) -> dict[str, tuple[str, int]]:
    """Every derived file for `plan` (plan.yaml aside): name -> (text, mode)."""
    files: dict[str, tuple[str, int]] = {"accelerate_config.yaml": (_yaml(accelerate_config(plan)), 0o644)}
    ds = deepspeed_config(plan)
    if ds is not None:
        files[DS_CONFIG] = (json.dumps(ds, indent=2) + "\n", 0o644)
    name = rundir.trl_config_name(plan.task)
    task = "" if plan.task == "sft" else f" --task {plan.task}"
    header = (f"# TRL {plan.task.upper()} config (TrlParser): python -m llmwizard.runner.rank.train "
              f"--config {name}{task}\n")
    files[name] = (header + _yaml(trl_config(plan)), 0o644)
    files["launch.sh"] = (launch_script(plan, python), 0o755)
    if plan.num_machines > 1:
        files["slurm.sbatch"] = (slurm_script(plan), 0o755)
        if plan.launcher == "deepspeed":
            # With --no_ssh the names are only counted: N machines, slots processes each.
            files[HOSTFILE] = ("".join(f"node{i} slots={plan.processes_per_machine}\n"
                                       for i in range(plan.num_machines)), 0o644)
    files["README.txt"] = (readme_text(plan), 0o644)
    if plan.targets:  # skypilot.yaml, trainjob.yaml, ray_train.py; refused by name when one cannot run the plan
        from llmwizard.runner.export.targets import render_targets

        files.update(render_targets(plan))
    return files


def export(plan: Plan, directory: Path, python: str | None = None, *, edits: str = "refuse",
           into_empty: bool = False) -> list[Path]:
    """Write every file for `plan` into `directory`; return their paths.

    A file edited by hand since the last export is never overwritten silently: by default this
    raises UserError naming it (see `export_files` for the choices)."""
    return export_files(plan, directory, python, edits=edits, into_empty=into_empty).written


def export_files(plan: Plan, directory: Path, python: str | None = None, *, edits: str = "refuse",
                 into_empty: bool = False) -> ExportReport:
    """Write the run files for `plan` and the manifest that records their hashes.

    plan.yaml is the source of truth. A derived file whose content differs both from what the
    manifest recorded and from what `plan` gives now was edited by hand; `edits` decides:
    "refuse" raises UserError before anything is written; "keep" leaves it as it is (recorded,
    so later launches with the same plan keep it and say so); "discard" moves it to
    `NAME.edited-<time>` and writes the plan's version. Unedited files follow the plan. Nothing
    else in the directory (output/, metrics.jsonl, train.log) is touched.

    Exclusive: the export holds the directory's export lock (runlock.export_lock), so a second
    export into it at the same time is refused rather than mixing two plans. `into_empty`: the
    directory must still hold no files once the lock is held (`llmwizard export` without --force
    looked before planning; another export may have written there since). Atomic: every file is
    written in full beside its target before any is renamed into place (safe_files), so a full
    disk, a permission or a name the kernel refuses ends in a UserError naming the path and the OS
    error, with the directory as it was (a directory this export created is removed again).
    """
    if edits not in EDIT_CHOICES:
        raise ValueError(f"edits must be one of {EDIT_CHOICES}, not {edits!r}")
    check_target(directory)
    created: list[Path] = []
    state_dir = directory / runlock.STATE_DIR
    state_made = False
    existed = directory.is_dir()
    try:
        try:
            make_directories(directory, created)
            state_made = not state_dir.exists()
            with runlock.export_lock(directory):
                return _write_export(plan, directory, python, edits, into_empty, existed)
        except OSError as exc:  # making the directory or its lock; nothing of the run was written
            where = Path(exc.filename) if exc.filename else directory
            raise fault(exc, where, "write to", directory, unchanged=True, existed=existed) from None
    except BaseException:
        if state_made:
            remove_empty([state_dir])
        remove_empty(created)
        raise


def _write_export(plan: Plan, directory: Path, python: str | None, edits: str, into_empty: bool,
                  existed: bool) -> ExportReport:
    """The export proper, under the directory's export lock: stage every file, then rename them in.
    `existed`: the directory was there before this export (for the words of a failure)."""
    files = render(plan, python)
    _clear_leftovers(directory, ["plan.yaml", *files, Path(rundir.MANIFEST_FILE).name])
    if into_empty:
        _check_still_empty(directory)
    manifest = rundir.read_manifest(directory)
    plan_data = json.loads(json.dumps(plan.to_dict(), default=str))
    digest = rundir.plan_digest(plan_data)
    same_plan = manifest is not None and manifest.plan_sha256 == digest
    edited, accepted = _edited(directory, files, manifest, same_plan)
    plan_path = directory / "plan.yaml"
    plan_new = not _plan_matches(plan_path, plan)
    # A plan.yaml that must change and differs from what llmwizard wrote last is kept aside.
    plan_edited = (plan_new and plan_path.is_file()
                   and (manifest is None or rundir.sha256_file(plan_path) != manifest.files.get("plan.yaml")))
    if edited and edits == "refuse":
        raise edited_files_error(directory, edited, manifest is None)

    report = ExportReport([])
    kept_edits: dict[str, str] = {}
    hashes: dict[str, str] = {}
    aside: list[Path] = []                   # edited files to move to NAME.edited-<time>
    unchanged: list[tuple[Path, int]] = []   # files whose content already follows the plan
    staged = StagedFiles()
    writing = plan_path
    try:  # 1. every new file in full under a temporary name; nothing in the directory changes yet
        if plan_new:
            _refuse_non_file(plan_path)
            if plan_edited:
                aside.append(plan_path)
            hashes["plan.yaml"] = rundir.sha256_file(staged.write_with(plan_path, plan.save, 0o644)) or ""
        else:
            hashes["plan.yaml"] = rundir.sha256_file(plan_path) or ""
        report.written.append(plan_path)
        for name, (text, mode) in files.items():
            path = writing = directory / name
            hashes[name] = rundir.sha256_text(text)
            keep = (name in edited and edits == "keep") or (name in accepted and (edits != "discard"
                                                                                  or name not in LAUNCH_FILES))
            report.written.append(path)
            if keep:
                kept_edits[name] = rundir.sha256_file(path) or ""
                report.kept.append(name)
                continue
            if name in edited or name in accepted:
                aside.append(path)
            if path.is_file() and path not in aside and path.read_text(encoding="utf-8", errors="replace") == text:
                unchanged.append((path, mode))
                continue
            _refuse_non_file(path)
            staged.write_text(path, text, mode)
        writing = directory / rundir.MANIFEST_FILE
        staged.write_text(writing, rundir.Manifest(
            files=hashes, plan=plan_data, plan_sha256=digest, kept_edits=kept_edits,
            exported=datetime.now().astimezone().isoformat(timespec="seconds")).to_json(), 0o644)
    except OSError as exc:
        staged.discard()
        raise fault(exc, writing, "write", directory, unchanged=True, existed=existed) from None

    try:  # 2. renames within the directory (no space needed), the manifest last
        when = rundir.stamp()
        for path in aside:
            report.set_aside.append(_set_aside(path, when))
            report.notes.append(f"plan.yaml held other, hand-made content; it is kept as {report.set_aside[-1].name}"
                                if path == plan_path else f"{path.name}: your edit is kept as "
                                f"{report.set_aside[-1].name}; exported again from plan.yaml")
        staged.commit()
        for path, mode in unchanged:
            path.chmod(mode)
        if manifest is not None:
            _drop_stale(directory, manifest, files)
    except OSError as exc:
        staged.discard()
        where = Path(exc.filename) if exc.filename else directory
        raise fault(exc, where, "move into place", directory, unchanged=False) from None
    for name in report.kept:
        report.notes.append(f"{name}: edited by hand, launched as it is; plan.yaml's values for it do not apply"
                            if name in LAUNCH_FILES else f"{name}: edited by hand, left as it is")
    if manifest is not None and not same_plan:
        changes = rundir.plan_changes(manifest.plan, plan_data)
        if changes:
            report.notes.append("plan.yaml changed since the last export: " + "; ".join(changes[:8])
                                + (f" (+{len(changes) - 8} more)" if len(changes) > 8 else ""))
    return report


def _refuse_non_file(path: Path) -> None:
    """A folder (or a device, a socket) where a run file belongs: renaming over it would fail only
    after other files were moved into place, so it is named before anything moves."""
    if path.exists() and not path.is_file():
        raise IsADirectoryError(errno.EISDIR, "a folder (or other non-file) is where the file belongs", str(path))


def _clear_leftovers(directory: Path, names: list[str]) -> None:
    """Remove temporaries an export killed mid-way left behind (`.NAME.<random>.tmp`, see
    safe_files.StagedFiles): under the export lock no other export is writing them."""
    for folder in (directory, directory / runlock.STATE_DIR):
        for name in names:
            for leftover in folder.glob(f".{glob.escape(name)}.*.tmp"):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def _check_still_empty(directory: Path) -> None:
    """Refuse when files appeared in `directory` since the caller found it empty (another export
    finished there while this one was planning): replacing them would lose that plan silently."""
    found = sorted(path.name for path in directory.iterdir() if path.name != runlock.STATE_DIR)
    state = directory / runlock.STATE_DIR
    lock_name = Path(runlock.EXPORT_LOCK_FILE).name
    if state.is_dir():
        found += sorted(f"{runlock.STATE_DIR}/{path.name}" for path in state.iterdir() if path.name != lock_name)
    if found:
        listed = ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
        raise UserError(f"{directory} is no longer empty: another export wrote {listed} there after this one "
                        "checked it. Nothing was written by this one.", title="Output directory",
                        fix=f"Look at {directory / 'plan.yaml'}; to replace it with this plan, export again with "
                            "--force, or choose a new directory.")


def edited_files(plan: Plan, directory: Path, python: str | None = None) -> list[str]:
    """The run files in `directory` edited by hand that an export of `plan` would overwrite."""
    manifest = rundir.read_manifest(directory)
    same = manifest is not None and manifest.plan_sha256 == rundir.plan_digest(
        json.loads(json.dumps(plan.to_dict(), default=str)))
    return _edited(directory, render(plan, python), manifest, same)[0]


def edited_files_error(directory: Path, names: list[str], no_manifest: bool) -> UserError:
    listed = ", ".join(names)
    verb = "was" if len(names) == 1 else "were"
    why = (f"{listed} in {directory} {'differs' if len(names) == 1 else 'differ'} from what plan.yaml gives, and "
           "the directory has no export record (an older llmwizard exported it, or the file was edited)"
           if no_manifest else f"{listed} in {directory} {verb} edited by hand since llmwizard exported "
           f"{'it' if len(names) == 1 else 'them'} from plan.yaml")
    return UserError(
        f"{why}. plan.yaml is the source of truth; exporting it again would overwrite the edit, so nothing "
        "was written or launched.", title="Edited run files",
        fix="Pass --keep-edits to launch the edited files as they are (plan.yaml's values for them do not apply), "
            "or --discard-edits to export them again from plan.yaml (your version is kept as NAME.edited-<time>). "
            "For a change that lasts, edit plan.yaml instead.")


def _edited(directory: Path, files: dict[str, tuple[str, int]], manifest: rundir.Manifest | None,
            same_plan: bool) -> tuple[list[str], list[str]]:
    """(edited, accepted): derived files on disk that differ both from what was exported and from
    what the plan gives now. `accepted` are edits kept before for this very plan (--keep-edits),
    and edits of files no launch reads (README.txt): kept without asking again."""
    edited: list[str] = []
    accepted: list[str] = []
    for name, (text, _) in files.items():
        path = directory / name
        if not path.is_file():
            continue
        current = rundir.sha256_file(path)
        if current == rundir.sha256_text(text):
            continue
        if manifest is not None and current == manifest.files.get(name):
            continue  # exported and untouched: it follows the plan
        if name not in LAUNCH_FILES or (manifest is not None and same_plan
                                        and current == manifest.kept_edits.get(name)):
            accepted.append(name)
        else:
            edited.append(name)
    return edited, accepted


def _drop_stale(directory: Path, manifest: rundir.Manifest, files: dict[str, tuple[str, int]]) -> None:
    """Remove files an earlier export wrote that this plan no longer has (ds_config.json after a
    switch from ZeRO to DDP), but only when untouched since."""
    for name, digest in manifest.files.items():
        path = directory / name
        if name == "plan.yaml" or name in files:
            continue
        if path.is_file() and rundir.sha256_file(path) == digest:
            path.unlink()


def _plan_matches(path: Path, plan: Plan) -> bool:
    try:
        return path.is_file() and Plan.load(path) == plan
    except UserError:
        return False


def _set_aside(path: Path, when: str) -> Path:
    target = rundir.unused_name(path.parent, f"{path.name}.edited-{when}")
    path.rename(target)
    return target


def _yaml(data: dict[str, Any]) -> str:
    # safe_dump quotes strings like "no" that would otherwise load back as booleans.
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
