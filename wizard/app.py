"""Interactive entry. Until the Textual wizard lands, it shows the plan and asks before launching."""

from __future__ import annotations

import argparse


def run_app(args: argparse.Namespace) -> int:
    from rich.prompt import Confirm

    from wizard import cli

    args.no_launch = not Confirm.ask("Plan, export and launch with these settings?", default=True)
    return cli.cmd_headless(args)
