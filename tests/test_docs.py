"""Every command the docs show runs, so the docs never rot.

Fenced ```bash blocks of README.md and docs/*.md are read line by line; each line that starts
with `llmwizard` is a documented command. In a plain `bash` block it must be a quick one (plan,
estimate, export, presets, detect, status) and runs for real, in-process, in a scratch directory
per page that holds a small `data.jsonl` (the file the docs' examples name); it must exit 0, or
the code a trailing `# exits N` comment names. Blocks fenced as ```bash long-running (a launch,
a resume, a watch) are parsed with the real argument parser here, and their behaviour is covered
by the run tests (tests/test_e2e.py, test_launchers.py, test_resume.py, test_rundir.py,
test_examples.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import signal
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUICK = {"plan", "estimate", "export", "presets", "detect", "status", "calibration", "runs"}
_FENCE = re.compile(r"^```(bash[^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documented(page: Path) -> list[tuple[str, bool, int]]:
    """(command line, long-running, expected exit code) for every llmwizard line of `page`."""
    found = []
    for info, body in _FENCE.findall(page.read_text(encoding="utf-8")):
        long_running = "long-running" in info.split()
        for line in body.splitlines():
            line = line.strip()
            if not line.startswith("llmwizard"):
                continue
            expected = re.search(r"#\s*exits (\d+)", line)
            found.append((line, long_running, int(expected.group(1)) if expected else 0))
    return found


def _run(line: str) -> tuple[int, str]:
    from llmwizard.wizard.cli import main

    words = shlex.split(line, comments=True)[1:]
    target = None
    if ">" in words:  # `llmwizard presets show NAME > file.yaml`
        at = words.index(">")
        words, target = words[:at], words[at + 1]
    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own; the test process keeps its
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(words)
    finally:
        signal.signal(signal.SIGTERM, handler)
    if target:
        Path(target).write_text(out.getvalue(), encoding="utf-8")
    return code, out.getvalue() + err.getvalue()


def _parses(line: str) -> None:
    from llmwizard.wizard.cli import SUBCOMMANDS, build_parser, build_subparser

    words = shlex.split(line, comments=True)[1:]
    parser = build_subparser(words[0]) if words and words[0] in SUBCOMMANDS else build_parser()
    try:
        parser.parse_args(words[1:] if words and words[0] in SUBCOMMANDS else words)
    except SystemExit as exc:
        raise AssertionError(f"`{line}` does not parse (exit {exc.code})") from None


def test_the_docs_show_commands_and_every_page_is_linked():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README.md does not link {page.name}"
    assert sum(len(documented(page)) for page in PAGES) >= 30
    from llmwizard.presets import all_presets

    presets_page = (ROOT / "docs" / "presets.md").read_text()
    for info in all_presets():
        assert f"`{info.name}`" in readme and f"`{info.name}`" in presets_page, info.name
        assert info.command in presets_page, f"docs/presets.md lacks the command of {info.name}: {info.command}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_documented_command_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    commands = documented(page)
    if not commands:
        pytest.skip(f"{page.name} shows no llmwizard command")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    rows = [{"messages": [{"role": "user", "content": f"What is {i}+{i % 7}?"},
                          {"role": "assistant", "content": str(i + i % 7)}]} for i in range(60)]
    Path("data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for line, long_running, expected in commands:
        if long_running:
            _parses(line)
            continue
        verb = shlex.split(line, comments=True)[1:2]
        assert verb and verb[0] in QUICK, (
            f"{page.name}: `{line}` is not a quick command; fence its block as ```bash long-running "
            "and cover it by a run test")
        code, output = _run(line)
        assert code == expected, f"{page.name}: `{line}` exited {code}, expected {expected}:\n{output[-3000:]}"
        assert "Traceback" not in output, output[-3000:]


def test_the_figures_in_how_decisions_are_made_are_the_codes():
    """The page quotes the planner's constants; a change to one must change the page too."""
    from llmwizard.autotune.data.dataset import PROFILE_SAMPLE
    from llmwizard.autotune.memory import OVERHEAD
    from llmwizard.autotune.data.rules import RULES, SMALL_MAX_AVG_TOKENS, SMALL_MAX_EXAMPLES
    from llmwizard.autotune.plan.search import HEADROOM
    from llmwizard.autotune.memory.throughput import BANDWIDTH, ENGINE, MFU, SATURATION_TOKENS
    from llmwizard.runner.recovery import MAX_OOM_RETRIES

    page = " ".join((ROOT / "docs" / "how-decisions-are-made.md").read_text().split())
    gib = 2**30
    expected = [
        f"fewer than {SMALL_MAX_EXAMPLES} **and** average under {SMALL_MAX_AVG_TOKENS} tokens",
        *(f"| {r.epochs} | {r.learning_rate:.0e} | {r.lora_r} | {r.max_length} |".replace("e-0", "e-") for r in RULES.values()),
        f"budget less {HEADROOM:.0%} headroom",
        f"x {MFU:.0%} utilisation", f"up to {SATURATION_TOKENS})",
        f"NVLink {BANDWIDTH['nvlink']:g} GB/s", f"PCIe {BANDWIDTH['pcie']:g} GB/s",
        f"InfiniBand {BANDWIDTH['infiniband']:g} GB/s", f"Ethernet {BANDWIDTH['ethernet']:g} GB/s",
        f"ZeRO-3 {ENGINE['zero3'] - 1:.0%}, FSDP {ENGINE['fsdp'] - 1:.0%}, ZeRO-2 {ENGINE['zero2'] - 1:.0%}",
        f"CUDA context {OVERHEAD['cuda_context'] / gib:.1f} GiB, NCCL {OVERHEAD['nccl'] / gib:.1f} GiB",
        f"{OVERHEAD['fragmentation']:.0%} allocator fragmentation",
        f"At most {PROFILE_SAMPLE} evenly spaced rows",
        f"up to {['no', 'one', 'two', 'three', 'four', 'five'][MAX_OOM_RETRIES]} times",
    ]
    missing = [text for text in expected if text not in page]
    assert not missing, f"docs/how-decisions-are-made.md no longer matches the code: {missing}"
