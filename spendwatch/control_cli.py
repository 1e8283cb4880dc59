"""`spendwatch kill / release / status` (filled in by the kill-switch work)."""

from __future__ import annotations

import argparse


def add_control_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the control subcommands on the main parser."""
