"""Presets: YAML files named for what they are for, each headed by the command that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals, goals_from_preset

PRESET_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) for every bundled preset."""
    return [(name, str(read_preset(name).get("description", ""))) for name in preset_names()]


def read_preset(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(
            f"Unknown preset '{name}'.",
            title="Preset",
            fix=f"Choose one of: {', '.join(preset_names())} (see `llmwizard presets`), "
            "or pass the path of a preset YAML file.",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"Preset {path} is not valid YAML: {exc}", title="Preset",
                        fix="Fix the file's syntax.") from None
    if not isinstance(data, dict):
        raise UserError(f"Preset {path} must be a YAML mapping of settings.", title="Preset",
                        fix="Write `key: value` lines, as in the bundled presets.")
    return data


def load_preset(name: str) -> Goals:
    return goals_from_preset(Path(name).stem if name.endswith((".yaml", ".yml")) else name, read_preset(name))
