"""The run exported for the systems multi-node jobs run on besides Slurm: a SkyPilot task
(skypilot.yaml), a Kubeflow Trainer v2 TrainJob (trainjob.yaml) and a Ray Train driver
(ray_train.py), each a rendering of the same plan and the same launch.

plan.yaml's `targets` (or `llmwizard export --target`) names them; `render_targets` is called by
every export (runner/export.render), so `llmwizard export` and `llmwizard run` write them alike and
a target that cannot express the plan is refused there, by name, before anything is written.

SkyPilot and the TrainJob start `bash launch.sh` on each node after mapping their own variables
onto the three launch.sh reads (MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT): one launch, one
quoting discipline (runner/scripts). Ray Train replaces the launcher: its workers run the same
per-rank training entry with the environment torchrun's launch.sh would export.

Nothing here imports sky, kubernetes or ray: the files are rendered with yaml.safe_dump and the
test suite checks them with each system's own parser. Only ray_worker (run inside Ray) imports ray.
"""

from __future__ import annotations

import re
import shlex
from importlib import metadata
from typing import Any

import yaml
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan

TARGET_FILES: dict[str, str] = {"skypilot": "skypilot.yaml", "kubernetes": "trainjob.yaml", "ray": "ray_train.py"}


def render_targets(plan: Plan) -> dict[str, tuple[str, int]]:
    """The files of every target in plan.targets: name -> (text, mode). Raises UserError naming the
    target and the reason when one cannot express the plan (nothing is written then)."""
    from llmwizard.runner.export.targets import kubernetes, ray_train, skypilot

    renderers = {"skypilot": skypilot.render, "kubernetes": kubernetes.render, "ray": ray_train.render}
    return {TARGET_FILES[target]: renderers[target](plan) for target in dict.fromkeys(plan.targets)}


def cannot_express(target: str, plan: Plan, reason: str, fix: str) -> UserError:
    """The refusal of a target that cannot run the plan as planned: named, with the reason."""
    return UserError(f"The target {target} (--target {target}, or plan.yaml's targets) cannot express the plan for "
                     f"run '{plan.name}': {reason}. Nothing was written.", title=f"Target {target}",
                     fix=f"{fix} Or leave {target} out (export without --target {target}; in plan.yaml, remove it "
                         "from targets).")


def dns_label(name: str) -> str:
    """`name` as a Kubernetes object name / bucket name: lower-case letters, digits and '-', at most
    63 characters, starting and ending with a letter or digit (RFC 1123)."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "llmwizard-run"


def expect_variable(variable: str, expected: int, what: str, system: str) -> str:
    """A shell line that stops the node with exit code 2 when `system` started it with another
    `variable` than the plan's `expected` (the world would not be the planned one)."""
    return (f'[ "${{{variable}:-}}" = {shlex.quote(str(expected))} ] || {{ echo '
            f'{shlex.quote(f"llmwizard: the plan is for {expected} {what}, but {system} set {variable}=")}'
            f'"${{{variable}:-unset}}" >&2; exit 2; }}')


def required_packages(plan: Plan) -> list[str]:
    """What a fresh machine installs to run the plan: llmwizard (which brings torch, transformers,
    TRL, accelerate and PEFT) at the version that exported it, and DeepSpeed for ZeRO."""
    try:
        version = metadata.version("llmwizard")
    except metadata.PackageNotFoundError:  # run from a source tree without an install
        version = ""
    packages = [f"llmwizard=={version}" if version else "llmwizard"]
    if plan.strategy.startswith("zero") or plan.launcher == "deepspeed":
        packages.append("deepspeed")
    if plan.method == "qlora":
        packages.append("bitsandbytes")
    return packages


def comment_block(lines: list[str]) -> str:
    """Lines as `# ` comments; a control character in a plan value cannot end a comment."""
    return "".join("# " + "".join(c if c.isprintable() else " " for c in line) + "\n" for line in lines)


class _LiteralDumper(yaml.SafeDumper):
    """yaml.safe_dump with multi-line strings (scripts) as `|` blocks, as people write them."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and all(c.isprintable() or c == "\n" for c in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _text)


def dump_yaml(data: dict[str, Any]) -> str:
    """`data` as YAML that yaml.safe_load reads back equal (scripts as literal blocks)."""
    return yaml.dump(data, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=120)
