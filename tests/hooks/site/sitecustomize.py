"""Loads a test hook's Trainer callbacks into every rank of a run a test starts; production code knows nothing of it.

A test that wants a hook (tests/hooks/oom.py, disk.py, stop.py) adds `hook_environment(hook_file)`
to the run's environment: TEST_CALLBACKS_ENV names the hook file, and this folder goes first on
PYTHONPATH. The environment reaches every rank through launch.sh and the launcher, and Python runs
this module at the start of each interpreter (the `site` module imports `sitecustomize` from
sys.path). Where TEST_CALLBACKS_ENV is unset it does nothing more than that one lookup. Where it is
set it puts a finder on sys.meta_path that waits for `llmwizard.runner.rank.callbacks` to be imported
(only the ranks do; the CLI and the launchers never), lets the usual finder load it, then wraps
its `default_callbacks` so the list the training entry installs ends with the hook's
`callbacks()`, and takes itself off sys.meta_path.

Nothing here imports llmwizard, torch or transformers: the hook file itself is loaded only when a
rank asks for its callbacks.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# The hook file (an absolute path: the ranks run in the run directory) whose `callbacks()` every rank adds.
TEST_CALLBACKS_ENV = "LLMWIZARD_TEST_CALLBACKS"
CALLBACKS_MODULE = "llmwizard.runner.rank.callbacks"
SITE = Path(__file__).resolve().parent


def hook_environment(hook_file: str | Path) -> dict[str, str]:
    """What a test adds to a run's environment so that every rank installs `hook_file`'s callbacks:
    the hook's absolute path, and this folder ahead of any PYTHONPATH the test process has."""
    python_path = [str(SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {TEST_CALLBACKS_ENV: str(Path(hook_file).resolve()), "PYTHONPATH": os.pathsep.join(python_path)}


def hook_callbacks(hook_file: str) -> list[Any]:
    """The callbacks of the hook file, loaded under a name of its own (it is no package module)."""
    spec = importlib.util.spec_from_file_location("llmwizard_test_hook", hook_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{TEST_CALLBACKS_ENV}={hook_file!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.callbacks())


def add_hook_callbacks(module: ModuleType, hook_file: str) -> None:
    """Make `module.default_callbacks` return the hook's callbacks after its own."""
    original = module.default_callbacks

    @functools.wraps(original)
    def default_callbacks(*args: Any, **kwargs: Any) -> list[Any]:
        return list(original(*args, **kwargs)) + hook_callbacks(hook_file)

    module.default_callbacks = default_callbacks


class _HookedLoader(importlib.abc.Loader):
    """The usual loader of the callbacks module, with the hook's callbacks added once it has run."""

    def __init__(self, loader: importlib.abc.Loader, hook_file: str) -> None:
        self.loader = loader
        self.hook_file = hook_file

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        add_hook_callbacks(module, self.hook_file)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the usual loader
        if name == "loader":  # (not set yet, as on a copy: no recursion)
            raise AttributeError(name)
        return getattr(self.loader, name)


class CallbacksModuleFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when the callbacks module is imported it asks the finders after it for
    the module's spec, swaps in `_HookedLoader`, and leaves sys.meta_path as it found it."""

    def __init__(self, hook_file: str) -> None:
        self.hook_file = hook_file

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != CALLBACKS_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _HookedLoader(spec.loader, self.hook_file)
                return spec
        return None


def install(hook_file: str) -> None:
    """Add the hook to the callbacks module: now if it is already imported, else when it is."""
    module = sys.modules.get(CALLBACKS_MODULE)
    if module is not None:
        add_hook_callbacks(module, hook_file)
    else:
        sys.meta_path.insert(0, CallbacksModuleFinder(hook_file))


if __name__ == "sitecustomize" and os.environ.get(TEST_CALLBACKS_ENV):  # (not when a test imports this module)
    install(os.environ[TEST_CALLBACKS_ENV])
