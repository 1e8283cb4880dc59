"""`spendwatch kill / release / status`: signed control commands from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from schemas.control import CLI_FLAGS, MAX_TTL_S, ControlCommand, Scope, release_command
from schemas.signing import Keyring, KeyringError
from spendwatch.cli.common import CliError, Command, broker_arg

if TYPE_CHECKING:
    from spendwatch.cli.common import Subparsers

T = TypeVar("T")
DEFAULT_TOPIC = "spendwatch.control"
SCOPES: tuple[Scope, ...] = get_args(Scope)
"""The scopes in `CLI_FLAGS` order: run, agent, workflow."""
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
KEYS_HELP = ("key file: a private key file of `spendwatch keys generate`, or kid:secret lines; the first key "
             "signs (default: $SPENDWATCH_CONTROL_KEYS_FILE, else $SPENDWATCH_CONTROL_KEYS=kid:secret,...)")
EXAMPLES = {
    "kill": "example:\n  spendwatch kill --run r-42 --reason 'looping on the same tool call' --ttl 2h "
            "--broker kafka://kafka:9092",
    "release": "example:\n  spendwatch release --run r-42 --broker kafka://kafka:9092",
    "status": "example:\n  spendwatch status --broker kafka://kafka:9092",
    "keys": "example:\n  spendwatch keys generate --out keys/ --kid ops-2026 --workflows support-bot,rag-search\n"
            "  # keys/ops-2026.key (0600) signs: worker policy, spendwatch kill/release --keys-file\n"
            "  # keys/ops-2026.pub verifies: guards, SPENDWATCH_CONTROL_KEYS_FILE=keys/ops-2026.pub",
}


def _ttl(value: str) -> float:
    """`90`, `90s`, `30m`, `1h`, `2d` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration; use e.g. 90s, 30m, 1h, 2d")
    seconds = float(m[1]) * UNITS[m[2]]
    if not 0 < seconds <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"{value!r} must be more than 0 and at most {MAX_TTL_S / 86400:.0f}d")
    return seconds


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.2g}{unit}"
    return f"{seconds:.0f}s"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _run(coro: Coroutine[Any, Any, T], broker: str) -> T:
    """Run a Kafka call; an unreachable broker is one line, not a traceback."""
    from aiokafka.errors import KafkaError

    from spendwatch.control import ControlPlaneUnreachable

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors would repeat ours
    try:
        return asyncio.run(coro)
    except (KafkaError, ControlPlaneUnreachable) as err:
        raise CliError(f"cannot use the control topic on {broker}: {err}") from None


def _keyring(path: Path | None) -> Keyring:
    try:
        return Keyring.load(path)
    except KeyringError as err:
        raise CliError(str(err)) from None


def _publish(args: argparse.Namespace, action: Literal["kill", "release"], reason: str,
             ttl_s: float) -> ControlCommand:
    """Sign and publish a command for the one target flag given."""
    from schemas.signing import CommandRejected, authorize, make_command
    from spendwatch.control import cli_issuer, publish_command

    scope = next(s for s in SCOPES if getattr(args, s) is not None)
    keyring = _keyring(args.keys_file)
    try:
        cmd = make_command(action, scope, getattr(args, scope), reason, ttl_s, cli_issuer(), keyring=keyring,
                           alert_id=getattr(args, "alert", None), workflow=args.of_workflow, team=args.team)
        authorize(keyring.entries[cmd.key_id], cmd, cmd.team)  # guards would refuse it: say so now
    except KeyringError as err:
        raise CliError(str(err)) from None
    except CommandRejected:
        entry = keyring.entries[cmd.key_id]
        allowed = [f"{what} {', '.join(sorted(names))}" for what, names in
                   (("workflows", entry.workflows), ("teams", entry.teams)) if names]
        raise CliError(f"key {entry.kid} may only stop {' or '.join(allowed)}: name the run's or agent's "
                       "workflow with --of-workflow (or its team with --team)") from None
    _run(publish_command(args.broker, args.topic, cmd), args.broker)
    return cmd


def cmd_kill(args: argparse.Namespace) -> int:
    cmd = _publish(args, "kill", args.reason, args.ttl)
    undo = release_command(cmd.scope, cmd.target, args.broker, args.topic if args.topic != DEFAULT_TOPIC else None)
    print(f"killed {cmd.scope} {cmd.target} until {_utc(cmd.expires_at)} ({_human(args.ttl)}): {args.reason}\n"
          f"command {cmd.command_id}, signed with key {cmd.key_id}, on {args.topic}\nundo with:\n  {undo}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    # a release stays valid as long as any kill can, so a guard replaying the topic later still sees it win
    cmd = _publish(args, "release", args.reason, MAX_TTL_S)
    print(f"released {cmd.scope} {cmd.target} (command {cmd.command_id}); guards resume within seconds")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from spendwatch.control import count_since, read_active

    keyring = _keyring(args.keys_file)
    now = time.time()
    # counting first also fails fast on an unreachable broker (reading waits for the topic to catch up)
    alerts = _run(count_since(args.broker, args.alerts_topic, now - 3600), args.broker)
    kills = _run(read_active(args.broker, args.topic, keyring, now), args.broker)
    console = Console()
    if kills:
        table = Table(title=f"active kills on {args.topic}")
        for column in ("scope", "target", "reason", "alert", "issued by", "age", "expires in"):
            table.add_column(column)
        for c in kills:
            table.add_row(c.scope, c.target, c.reason, c.alert_id or "-", c.issued_by,
                          _human(max(now - c.issued_at, 0)), _human(c.expires_at - now))
        console.print(table)
    else:
        console.print(f"no active kills on {args.topic}")
    console.print(f"alerts published to {args.alerts_topic} in the last hour: {alerts}")
    return 0


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--broker", type=broker_arg, required=True,
                    help="Kafka bootstrap, kafka://HOST:PORT[,HOST:PORT]")
    sp.add_argument("--keys-file", type=Path, help=KEYS_HELP)
    sp.add_argument("--topic", default=DEFAULT_TOPIC, help="control topic (default: %(default)s)")


def _targets(sp: argparse.ArgumentParser) -> None:
    group = sp.add_mutually_exclusive_group(required=True)
    for scope, flag in CLI_FLAGS.items():
        group.add_argument(flag, dest=scope, metavar="ID" if scope != "workflow" else "NAME",
                           help=f"the {scope.replace('_id', '')} to {sp.prog.split()[-1]}")
    sp.add_argument("--of-workflow", metavar="NAME",
                    help="the workflow of the run or agent (signed; keys restricted to workflows need it)")
    sp.add_argument("--team", metavar="NAME",
                    help="the team whose runtimes the command is for (signed; keys restricted to teams need it)")


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more names, separated by commas")
    return names


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Write KID.key (private, 0600) and KID.pub (public) into DIR; never overwrite."""
    import json
    import os
    import secrets

    from schemas.signing import new_ed25519

    kid = args.kid or f"ed25519-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", kid):
        raise CliError(f"--kid {kid!r}: use letters, digits, '.', '_' and '-' (it names the files)")
    out: Path = args.out
    private_path, public_path = out / f"{kid}.key", out / f"{kid}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise CliError(f"{path} exists: refusing to overwrite a key (choose another --kid or --out)")
    private, public = new_ed25519(kid, args.workflows, args.teams)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, entry, mode in ((private_path, private, 0o600), (public_path, public, 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # O_EXCL: never overwrite
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), mode)  # whatever the umask
                f.write(json.dumps({"keys": [entry]}, indent=2) + "\n")
    except OSError as err:
        raise CliError(f"cannot write the key pair into {out}: {err.strerror} ({err.filename})") from None
    scope = " and ".join(f"{what} {', '.join(names)}" for what, names in
                         (("workflows", args.workflows), ("teams", args.teams)) if names) or "anything"
    print(f"key {kid} (ed25519) may stop {scope}\n"
          f"  {private_path}  private: signers (worker policy control_keys_file, spendwatch kill --keys-file); "
          "keep secret\n"
          f"  {public_path}  public: guards (SPENDWATCH_CONTROL_KEYS_FILE or Keyring.load(path)); merge the "
          "\"keys\" lists of several files to rotate")
    return 0


def add_control_commands(sub: Subparsers) -> None:
    """Register the control subcommands on the main parser."""

    def add(name: str, help_: str, func: Command | None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    k = add("kill", "Stop the spend of a run, agent or workflow: publish a signed kill that every guard obeys "
            "within seconds, until its TTL ends or it is released.", cmd_kill)
    _targets(k)
    k.add_argument("--reason", required=True, help="why; shown to on-call and raised in SpendKilled")
    k.add_argument("--ttl", type=_ttl, default=3600.0, metavar="DURATION",
                   help="how long the kill lasts: 90s, 30m, 1h, 2d (default: 1h)")
    k.add_argument("--alert", metavar="ALERT_ID", help="the alert this kill answers")
    _common(k)

    r = add("release", "Lift a kill: publish a signed release for a run, agent or workflow.", cmd_release)
    _targets(r)
    r.add_argument("--reason", default="released from the command line", help="why (default: %(default)s)")
    _common(r)

    keys = sub.add_parser("keys", help="Ed25519 key pairs for signing kill commands",
                          description="Ed25519 key pairs for signing kill commands", epilog=EXAMPLES["keys"],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    keys.set_defaults(func=None)
    ksub = keys.add_subparsers(dest="keys_command", metavar="{generate}", required=True)
    g = ksub.add_parser("generate", help="write KID.key (private, mode 0600) and KID.pub (public) into DIR",
                        description="Write an Ed25519 key pair: KID.key (private, mode 0600) for signers and "
                                    "KID.pub for guards. Existing files are never overwritten.",
                        epilog=EXAMPLES["keys"], formatter_class=argparse.RawDescriptionHelpFormatter)
    g.set_defaults(func=cmd_keys_generate)
    g.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the two files")
    g.add_argument("--kid", help="key id (default: ed25519-DATE-RANDOM)")
    g.add_argument("--workflows", type=_names, metavar="A,B", help="restrict the key to these workflows")
    g.add_argument("--teams", type=_names, metavar="X,Y", help="restrict the key to these teams")

    s = add("status", "Show the kills in force (verified as a guard would) and the alerts of the last hour.",
            cmd_status)
    _common(s)
    s.add_argument("--alerts-topic", default="spendwatch.alerts", help="alerts topic (default: %(default)s)")
