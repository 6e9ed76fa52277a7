"""Exporters: pure functions from a Plan to the files a run is launched from.

    plan.yaml               the Plan itself; loads back into an equal Plan
    accelerate_config.yaml  accelerate's config (CPU, DDP, FSDP2 or DeepSpeed)
    ds_config.json          DeepSpeed ZeRO-2/3, "auto" wherever the HF Trainer fills the value
    sft_config.yaml         TRL's TrlParser format (ScriptArguments + SFTConfig + ModelConfig)
    launch.sh               the exact command, runnable from anywhere: `bash launch.sh`
    slurm.sbatch            multi-node runs under Slurm
    README.txt              how to rerun
    .llmwizard/manifest.json  the sha256 of each file as exported, and the plan it was made from

plan.yaml is the source of truth: exporting again brings the other files in line with it, except
a file edited by hand, which is never overwritten silently (see `export_files`).
Nothing secret is written: hub tokens and tracker keys stay in the environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan
from llmwizard.runner import rundir
from llmwizard.runner.configs import (  # noqa: F401 (the exporters' public names, re-exported)
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
)
from llmwizard.runner.scripts import (  # noqa: F401
    IS_HOST,
    launch_command,
    launch_script,
    readme_text,
    slurm_script,
    train_arguments,
)


# The files a launch reads: an edit to one of these changes what trains.
LAUNCH_FILES = ("accelerate_config.yaml", DS_CONFIG, "sft_config.yaml", "launch.sh", "slurm.sbatch", HOSTFILE)
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
    files["sft_config.yaml"] = ("# TRL SFT config (TrlParser): python -m llmwizard.runner.train --config sft_config.yaml\n"
                                + _yaml(sft_config(plan)), 0o644)
    files["launch.sh"] = (launch_script(plan, python), 0o755)
    if plan.num_machines > 1:
        files["slurm.sbatch"] = (slurm_script(plan), 0o755)
        if plan.launcher == "deepspeed":
            # With --no_ssh the names are only counted: N machines, slots processes each.
            files[HOSTFILE] = ("".join(f"node{i} slots={plan.processes_per_machine}\n"
                                       for i in range(plan.num_machines)), 0o644)
    files["README.txt"] = (readme_text(plan), 0o644)
    return files


def export(plan: Plan, directory: Path, python: str | None = None, *, edits: str = "refuse") -> list[Path]:
    """Write every file for `plan` into `directory`; return their paths.

    A file edited by hand since the last export is never overwritten silently: by default this
    raises UserError naming it (see `export_files` for the choices)."""
    return export_files(plan, directory, python, edits=edits).written


def export_files(plan: Plan, directory: Path, python: str | None = None, *, edits: str = "refuse") -> ExportReport:
    """Write the run files for `plan` and the manifest that records their hashes.

    plan.yaml is the source of truth. A derived file whose content differs both from what the
    manifest recorded and from what `plan` gives now was edited by hand; `edits` decides:
    "refuse" raises UserError before anything is written; "keep" leaves it as it is (recorded,
    so later launches with the same plan keep it and say so); "discard" moves it to
    `NAME.edited-<time>` and writes the plan's version. Unedited files follow the plan. Nothing
    else in the directory (output/, metrics.jsonl, train.log) is touched.
    """
    if edits not in EDIT_CHOICES:
        raise ValueError(f"edits must be one of {EDIT_CHOICES}, not {edits!r}")
    directory.mkdir(parents=True, exist_ok=True)
    files = render(plan, python)
    manifest = rundir.read_manifest(directory)
    plan_data = json.loads(json.dumps(plan.to_dict(), default=str))
    digest = rundir.plan_digest(plan_data)
    same_plan = manifest is not None and manifest.plan_sha256 == digest
    edited, accepted = _edited(directory, files, manifest, same_plan)
    plan_path = directory / "plan.yaml"
    # A plan.yaml that must change and differs from what llmwizard wrote last is kept aside.
    plan_edited = (plan_path.is_file() and not _plan_matches(plan_path, plan)
                   and (manifest is None or rundir.sha256_file(plan_path) != manifest.files.get("plan.yaml")))
    if edited and edits == "refuse":
        raise edited_files_error(directory, edited, manifest is None)

    report = ExportReport([])
    when = rundir.stamp()
    kept_edits: dict[str, str] = {}
    hashes: dict[str, str] = {}
    if not _plan_matches(plan_path, plan):
        if plan_edited:
            report.set_aside.append(_set_aside(plan_path, when))
            report.notes.append(f"plan.yaml held other, hand-made content; it is kept as {report.set_aside[-1].name}")
        plan.save(plan_path)
    hashes["plan.yaml"] = rundir.sha256_file(plan_path) or ""
    report.written.append(plan_path)
    for name, (text, mode) in files.items():
        path = directory / name
        hashes[name] = rundir.sha256_text(text)
        keep = (name in edited and edits == "keep") or (name in accepted and (edits != "discard"
                                                                              or name not in LAUNCH_FILES))
        if keep:
            kept_edits[name] = rundir.sha256_file(path) or ""
            report.kept.append(name)
            report.written.append(path)
            continue
        if name in edited or name in accepted:
            report.set_aside.append(_set_aside(path, when))
            report.notes.append(f"{name}: your edit is kept as {report.set_aside[-1].name}; "
                                "exported again from plan.yaml")
        if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:
            path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        report.written.append(path)
    for name in report.kept:
        report.notes.append(f"{name}: edited by hand, launched as it is; plan.yaml's values for it do not apply"
                            if name in LAUNCH_FILES else f"{name}: edited by hand, left as it is")
    if manifest is not None:
        _drop_stale(directory, manifest, files)
        if not same_plan:
            changes = rundir.plan_changes(manifest.plan, plan_data)
            if changes:
                report.notes.append("plan.yaml changed since the last export: " + "; ".join(changes[:8])
                                    + (f" (+{len(changes) - 8} more)" if len(changes) > 8 else ""))
    rundir.write_manifest(directory, rundir.Manifest(
        files=hashes, plan=plan_data, plan_sha256=digest, kept_edits=kept_edits,
        exported=datetime.now().astimezone().isoformat(timespec="seconds")))
    return report


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
