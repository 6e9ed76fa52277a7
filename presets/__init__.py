"""Presets: YAML files named for what they are for, each headed by the command that runs it.

A preset's keys are Goals fields; their allowed values are in llmwizard.autotune.schema and
docs/schema.md.
"""

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


def preset_path(name: str) -> Path:
    """The file of a preset given by name or path; UserError naming the choices when none."""
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
    return path


def read_preset(name: str) -> dict[str, Any]:
    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"Preset {path} is not valid YAML: {exc}", title="Preset",
                        fix="Fix the file's syntax.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Preset {path} cannot be read: {exc}", title="Preset",
                        fix="Pass a readable UTF-8 YAML file.") from None
    if not isinstance(data, dict):
        raise UserError(f"Preset {path} must be a YAML mapping of settings.", title="Preset",
                        fix="Write `key: value` lines, as in the bundled presets.")
    return data


def load_preset(name: str) -> Goals:
    """The preset's Goals, validated by the schema: an unknown key or a bad value names the
    preset file, the key, the value and what is allowed."""
    short = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    return goals_from_preset(short, read_preset(name), where=str(preset_path(name)))
