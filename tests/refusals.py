"""What every refusal of bad input must look like, shared by the parametrised bad-input tests:
exit code 2, no traceback, the input and the value named, and the run directory left as it was."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def flat(text: str) -> str:
    """The message without the panel's border and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes, to show that a refusal changed nothing."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_refused(result: subprocess.CompletedProcess[str], words: list[str]) -> str:
    """Exit 2, no traceback on either stream, and each of `words` in the flattened message."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    message = flat(result.stderr)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    return message
