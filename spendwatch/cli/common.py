"""What every `spendwatch` command shares: the user-error type, argument parsers, config loading."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spendwatch.config import Settings
    from streams.kafka_security import KafkaSecurity

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
    """What `add_subparsers` returns: each command module registers its commands on it."""

Command = Callable[[argparse.Namespace], int]
"""A subcommand: parsed arguments in, exit status out."""


class CliError(Exception):
    """A user mistake; printed as one line with what to do, exit status 2."""


def broker_arg(value: str) -> str:
    body = value.split("://", 1)[-1]
    for part in body.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"{value!r} is not a broker address; use kafka://HOST:PORT")
    return value if "://" in value else f"kafka://{value}"


def port(value: str) -> int:
    """A TCP port, 0 meaning off."""
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port; use 1-65535, or 0 for off")
    return int(value)


def positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be > 0")
    return v


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The config's `[kafka]` settings with the SPENDWATCH_KAFKA_* variables over them (never flags:
    those show in `ps`); a missing file or password is a user error naming it."""
    from streams.kafka_security import KafkaSecurityError

    try:
        return settings.kafka.security()
    except KafkaSecurityError as err:
        raise CliError(str(err)) from None


def load_config(path: Path | None) -> Settings:
    """The settings from `path` (defaults when None); a bad file is a user error."""
    from spendwatch.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as err:
        raise CliError(str(err)) from None
