"""The calibration store: what probes measured on this machine, to correct later estimates.

Each probe (llmwizard.runner.session.probe) records two ratios for its configuration: the measured peak
over the expected peak (llmwizard.autotune.memory's `total` before any calibration) and the
measured tokens per second over the planner's prediction. They are kept per GPU model, model
family, method and strategy in `calibration.json` in the user's cache directory (platformdirs),
at most MAX_RATIOS per key and MAX_KEYS keys (the least recently updated go first). Estimates on
the same machine are then scaled by the mean memory ratio of their key, and say so.

A store that cannot be read (a directory or a pipe in its place, no permission), is not JSON, or
is not ours (another format or version) is ignored with a warning, never a crash; the next probe
writes a fresh one. `llmwizard calibration --reset` removes the store file and nothing else: a
directory in its place, or a file it cannot remove, is a UserError that names the path and leaves
it as it is. LLMWIZARD_CALIBRATION_DIR overrides the directory (the tests point it at a temporary
one), then LLMWIZARD_CACHE (the cache the embedded model uses too).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.train_setup import Calibrated

CACHE_ENV = "LLMWIZARD_CALIBRATION_DIR"
FILE_NAME = "calibration.json"
FORMAT = "llmwizard-calibration"
VERSION = 1
MAX_RATIOS = 10        # per key: the latest probes
MAX_KEYS = 64          # keys kept; the least recently updated are dropped
# A memory ratio outside this range is a broken measurement (or a store edited by hand), not a
# correction: it is neither stored nor used. Speed ratios range wider: on the CPU the cost model
# only ranks candidates against each other and may be off by orders of magnitude.
PLAUSIBLE = (0.25, 4.0)
PLAUSIBLE_SPEED = (1e-4, 1e4)


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV) or os.environ.get("LLMWIZARD_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("llmwizard", appauthor=False))


def store_path() -> Path:
    return cache_dir() / FILE_NAME


@dataclass(frozen=True)
class Key:
    """What a ratio is valid for: the GPU model ("cpu" on the CPU), model family, method, strategy."""

    gpu: str
    family: str
    method: str
    strategy: str

    def text(self) -> str:
        return "|".join((self.gpu, self.family, self.method, self.strategy))

    @classmethod
    def parse(cls, text: str) -> Key | None:
        parts = text.split("|")
        return cls(*parts) if len(parts) == 4 and all(parts) else None


@dataclass
class Entry:
    memory: list[float] = field(default_factory=list)   # measured / expected peak
    speed: list[float] = field(default_factory=list)    # measured / predicted tokens per second
    updated: float = 0.0

    def memory_factor(self) -> Calibrated | None:
        return Calibrated(round(sum(self.memory) / len(self.memory), 4), len(self.memory)) if self.memory else None

    def speed_factor(self) -> float | None:
        return sum(self.speed) / len(self.speed) if self.speed else None


@dataclass
class Store:
    path: Path
    entries: dict[Key, Entry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None = None) -> Store:
        """The store at `path` (default: the user's cache); empty, with a warning, when the file
        is unreadable, corrupt or foreign."""
        path = path or store_path()
        store = cls(path)
        if path.exists() and not path.is_file():  # a directory, or a pipe that a read would wait on forever
            store.warnings.append(f"Calibration store {path} is not a file; estimates are not calibrated.")
            return store
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return store
        except (OSError, UnicodeDecodeError) as exc:
            store.warnings.append(f"Calibration store {path} cannot be read ({exc}); estimates are not calibrated.")
            return store
        try:
            data = json.loads(text)
        except ValueError:
            store.warnings.append(f"Calibration store {path} is not valid JSON; ignored (the next probe "
                                  "replaces it, `llmwizard calibration --reset` removes it).")
            return store
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION \
                or not isinstance(data.get("entries"), dict):
            store.warnings.append(f"Calibration store {path} is not an llmwizard calibration store (version "
                                  f"{VERSION}); ignored (the next probe replaces it).")
            return store
        for text_key, raw in data["entries"].items():
            key = Key.parse(str(text_key))
            entry = _entry(raw)
            if key is None or entry is None:
                store.warnings.append(f"Calibration store {path}: entry {str(text_key)[:60]!r} is damaged; skipped.")
                continue
            store.entries[key] = entry
        return store

    def record(self, key: Key, memory_ratio: float | None, speed_ratio: float | None = None) -> bool:
        """Add one probe's ratios (implausible ones are dropped); True when anything was kept."""
        kept = False
        entry = self.entries.setdefault(key, Entry())
        for values, ratio, bounds in ((entry.memory, memory_ratio, PLAUSIBLE), (entry.speed, speed_ratio,
                                                                                    PLAUSIBLE_SPEED)):
            if ratio is not None and _plausible(ratio, bounds):
                values.append(round(float(ratio), 4))
                del values[:-MAX_RATIOS]
                kept = True
        if not kept and not entry.memory and not entry.speed:
            del self.entries[key]
            return False
        entry.updated = time.time()
        while len(self.entries) > MAX_KEYS:
            oldest = min(self.entries, key=lambda k: self.entries[k].updated)
            del self.entries[oldest]
        return kept

    def factors(self, gpu: str, family: str, method: str) -> dict[str, Calibrated]:
        """The memory factor of each strategy measured for this GPU model, model family and method."""
        found = {}
        for key, entry in self.entries.items():
            factor = entry.memory_factor()
            if factor and (key.gpu, key.family, key.method) == (gpu, family, method):
                found[key.strategy] = factor
        return found

    def save(self) -> None:
        """Write atomically (a crash leaves the old store or the new one, never half of one)."""
        data = {"format": FORMAT, "version": VERSION,
                "entries": {key.text(): {"memory": e.memory, "speed": e.speed, "updated": e.updated}
                            for key, e in self.entries.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # nothing of ours left behind when the store cannot be replaced
            raise

    def reset(self) -> bool:
        """Remove the store file; True when there was one, False when there is none. A UserError
        when something else is in its place (a directory) or it cannot be removed: then nothing
        is changed, and the message names the path."""
        self.entries.clear()
        path = self.path
        where = shlex.quote(str(path))
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"The calibration store {path} is a directory, not the file llmwizard writes; it was left "
                            "as it is.", title="Calibration",
                            fix=f"If nothing in it is yours, remove it (rm -r {where}), or set {CACHE_ENV} to "
                                "another directory.")
        try:
            path.unlink()
            return True
        except (FileNotFoundError, NotADirectoryError):  # no store there (the cache directory may be a file)
            return False
        except OSError as exc:
            raise UserError(f"Cannot remove the calibration store {path} ({exc.strerror or type(exc).__name__}); "
                            "it was left as it is.", title="Calibration",
                            fix=f"Make {path.parent} writable, or set {CACHE_ENV} to a writable directory.") from None


def _plausible(value: Any, bounds: tuple[float, float] = PLAUSIBLE) -> bool:
    """A number within `bounds`; an int is compared as it is (an int of 400 digits overflows a float)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and (isinstance(value, int) or math.isfinite(value)) and bounds[0] <= value <= bounds[1]


def _entry(raw: Any) -> Entry | None:
    if not isinstance(raw, dict):
        return None
    memory, speed, updated = raw.get("memory", []), raw.get("speed", []), raw.get("updated", 0.0)
    if not isinstance(memory, list) or not isinstance(speed, list) or not _plausible(updated, (0.0, 1e12)):
        return None  # updated: seconds since 1970; an int of 400 digits would not even convert to a float
    if not all(_plausible(v) for v in memory) or not all(_plausible(v, PLAUSIBLE_SPEED) for v in speed):
        return None
    return Entry([float(v) for v in memory][-MAX_RATIOS:], [float(v) for v in speed][-MAX_RATIOS:], float(updated))


def gpu_key(hardware_device: str, gpu_name: str | None) -> str:
    """The GPU model part of a key: the GPU's name, or "cpu"."""
    return "cpu" if hardware_device != "cuda" or not gpu_name else gpu_name
