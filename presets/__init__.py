"""Presets: YAML files named for what they are for, each headed by the command that runs it.

A preset's keys are Goals fields; their allowed values are in llmwizard.autotune.schema and
docs/schema.md. A preset is given by name (a bundled one, or the user's own in
`user_preset_dir()`) or by the path of a YAML file. A user preset with a bundled preset's name
takes its place.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals, goals_from_preset

PRESET_DIR = Path(__file__).parent
# Where the user's own presets live: $LLMWIZARD_CONFIG_DIR/presets when set (tests, shared
# setups), else platformdirs' user config directory (~/.config/llmwizard/presets on Linux).
CONFIG_ENV = "LLMWIZARD_CONFIG_DIR"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    description: str
    command: str       # the command from the file's heading comment ("" when it has none)
    user: bool         # from the user's config directory


def user_preset_dir() -> Path:
    configured = os.environ.get(CONFIG_ENV, "").strip()
    if configured:
        return Path(configured).expanduser() / "presets"
    from platformdirs import user_config_dir

    return Path(user_config_dir("llmwizard")) / "presets"


def _files() -> dict[str, tuple[Path, bool]]:
    """name -> (file, is a user preset); a user preset shadows a bundled one of the same name."""
    found = {path.stem: (path, False) for path in PRESET_DIR.glob("*.yaml")}
    user_dir = user_preset_dir()
    if user_dir.is_dir():
        for path in sorted([*user_dir.glob("*.yaml"), *user_dir.glob("*.yml")]):
            found[path.stem] = (path, True)
    return dict(sorted(found.items()))


def preset_names() -> list[str]:
    return list(_files())


def heading_command(text: str) -> str:
    """The command in a preset's heading comment: the first comment line that starts with
    `llmwizard` (before the first setting)."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if words.startswith("llmwizard "):
            return words
    return ""


def preset_info(name: str) -> PresetInfo:
    path = preset_path(name)
    data = read_preset(name)
    return PresetInfo(name=_short(name), path=path, description=str(data.get("description", "")),
                      command=heading_command(path.read_text(encoding="utf-8")),
                      user=path.parent != PRESET_DIR)


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) for every preset, bundled and the user's."""
    return [(info.name, info.description) for info in all_presets()]


def all_presets() -> list[PresetInfo]:
    return [preset_info(name) for name in preset_names()]


def preset_path(name: str) -> Path:
    """The file of a preset given by name or path; UserError naming the choices when none."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in name:
        if path.is_file():
            return path
        raise UserError(f"Preset file {name} does not exist.", title="Preset",
                        fix=f"Pass the path of a preset YAML file, or a name: {', '.join(preset_names())}.")
    files = _files()
    if name in files:
        return files[name][0]
    raise UserError(
        f"Unknown preset '{name}'.",
        title="Preset",
        fix=f"Choose one of: {', '.join(files)} (see `llmwizard presets`), "
        f"put {name}.yaml in {user_preset_dir()}, or pass the path of a preset YAML file.",
    )


class _KeySetTwice(yaml.YAMLError):
    """A mapping key given twice in a preset file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice is an error: plain PyYAML keeps the last
    value silently, so `epochs: 3` further down would quietly replace `epochs: 20`."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, Hashable):
                continue  # (PyYAML's own mapping refuses it: "found unhashable key")
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _KeySetTwice(f"sets key '{key}' twice (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_preset(name: str) -> dict[str, Any]:
    path = preset_path(name)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # (a SafeLoader)
    except _KeySetTwice as exc:
        raise UserError(f"Preset {path} {exc}: the later value would silently replace the earlier.",
                        title="Preset", fix="Keep one of them.") from None
    except yaml.YAMLError as exc:
        raise UserError(f"Preset {path} is not valid YAML: {exc}", title="Preset",
                        fix="Fix the file's syntax.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Preset {path} cannot be read: {exc}", title="Preset",
                        fix="Pass a readable UTF-8 YAML file.") from None
    if not isinstance(data, dict):
        raise UserError(f"Preset {path} must be a YAML mapping of settings.", title="Preset",
                        fix="Write `key: value` lines, as in the bundled presets (`llmwizard presets show small-dataset`).")
    return data


def _short(name: str) -> str:
    return Path(name).stem if name.endswith((".yaml", ".yml")) or os.sep in name else name


def load_preset(name: str) -> Goals:
    """The preset's Goals, validated by the schema: an unknown key or a bad value names the
    preset file, the key, the value and what is allowed."""
    return goals_from_preset(_short(name), read_preset(name), where=str(preset_path(name)))
