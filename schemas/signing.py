"""HMAC-SHA256 signatures on kill/release commands, and the checks a runtime applies before obeying one.

A command is signed over the canonical JSON (sorted keys) of every field but
`signature`, under a named key, so keys can rotate: a `Keyring` signs with its
first key and accepts all of them.

>>> ring = Keyring({"k1": b"s3cret"})
>>> cmd = ring.sign(ControlCommand(command_id="c1", action="kill", scope="run_id", target="r-1",
...                                reason="loop", issued_at=100.0, expires_at=200.0, issued_by="test"))
>>> Verifier(ring).verify(cmd, now=150.0)
>>> Verifier(ring).verify(cmd, now=250.0)
Traceback (most recent call last):
...
schemas.signing.CommandRejected: expired
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Literal

import orjson
from pydantic import ValidationError

from schemas.control import MAX_TTL_S, ControlCommand, Scope

KEYS_ENV = "SPENDWATCH_CONTROL_KEYS"
MAX_SKEW_S = 300.0
"""A command issued further than this in the future is refused: its issuer's clock (or its author) lies."""
MAX_COMMAND_BYTES = 64 * 1024
"""A genuine command is well under 1 KiB; anything near this is garbage, parsed for nothing."""
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


class KeyringError(ValueError):
    """No usable keys; the message says how to configure them."""


class CommandRejected(Exception):
    """A command the guard must not obey; `reason` is a short, countable label."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_command(raw: object) -> ControlCommand:
    """A control record's value → a command, or `CommandRejected`: no record, however malformed, raises
    anything else (a follower that dies on one record would blind the guard, and compaction keeps it)."""
    if raw is None:
        raise CommandRejected("tombstone")  # unsigned: it must not release anything either
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        raise CommandRejected("malformed")
    if len(raw) > MAX_COMMAND_BYTES:
        raise CommandRejected("oversize")
    try:
        return ControlCommand.model_validate_json(bytes(raw) if isinstance(raw, memoryview) else raw)
    except ValidationError:  # invalid JSON or UTF-8, wrong types, missing or unknown fields
        raise CommandRejected("malformed") from None
    except Exception:  # anything else the parser may meet: still a rejection, never a dead follower
        raise CommandRejected("malformed") from None


def _canonical(cmd: ControlCommand) -> bytes:
    return orjson.dumps(cmd.model_dump(exclude={"signature"}), option=orjson.OPT_SORT_KEYS)


class Keyring:
    """Shared secrets by key id; the first one signs, every one verifies (for rotation)."""

    def __init__(self, keys: dict[str, bytes]):
        if not keys:
            raise KeyringError(f"no control keys configured: set {KEYS_ENV}=kid:secret or --keys-file")
        self.keys = dict(keys)
        self.signing_key_id = next(iter(self.keys))

    @classmethod
    def parse(cls, entries: list[str], source: str) -> Keyring:
        """`kid:secret` entries (blank entries and `#` comments skipped); the secret may contain ':'."""
        keys: dict[str, bytes] = {}
        for entry in (e.strip() for e in entries):
            if not entry or entry.startswith("#"):
                continue
            kid, sep, secret = entry.partition(":")
            if not sep or not kid.strip() or not secret.strip():
                raise KeyringError(f"{source}: entries must look like kid:secret (got {kid.strip() or '?'}:...)")
            keys[kid.strip()] = secret.strip().encode()
        return cls(keys)

    @classmethod
    def load(cls, keys_file: Path | None = None) -> Keyring:
        """From `keys_file` (one `kid:secret` per line) if given, else from $SPENDWATCH_CONTROL_KEYS."""
        if keys_file is not None:
            try:
                return cls.parse(keys_file.read_text().splitlines(), str(keys_file))
            except OSError as err:
                raise KeyringError(f"{keys_file}: cannot read keys file ({err.strerror})") from None
        return cls.parse(os.environ.get(KEYS_ENV, "").split(","), KEYS_ENV)

    def _digest(self, key_id: str, cmd: ControlCommand) -> str:
        return hmac.new(self.keys[key_id], _canonical(cmd), hashlib.sha256).hexdigest()

    def sign(self, cmd: ControlCommand) -> ControlCommand:
        """A copy of `cmd` signed with the signing key."""
        unsigned = cmd.model_copy(update={"key_id": self.signing_key_id, "signature": ""})
        return unsigned.model_copy(update={"signature": self._digest(self.signing_key_id, unsigned)})

    def check_signature(self, cmd: ControlCommand) -> None:
        if not cmd.signature or not cmd.key_id:
            raise CommandRejected("unsigned")
        if not isinstance(cmd.key_id, str) or cmd.key_id not in self.keys:
            raise CommandRejected("unknown key id")
        # compare_digest raises TypeError on non-ASCII str: only 64 hex digits get that far
        if not isinstance(cmd.signature, str) or not HEX_DIGEST.fullmatch(cmd.signature):
            raise CommandRejected("bad signature")
        if not hmac.compare_digest(cmd.signature.lower().encode(), self._digest(cmd.key_id, cmd).encode()):
            raise CommandRejected("bad signature")


class Verifier:
    """Signature, validity window and replay checks; remembers the last `max_seen` command ids."""

    def __init__(self, keyring: Keyring, max_seen: int = 100_000):
        self.keyring = keyring
        self.max_seen = max_seen
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest id is forgotten first

    def verify(self, cmd: ControlCommand, now: float) -> None:
        """Raise `CommandRejected` (and nothing else) unless `cmd` is authentic, current and new to this verifier."""
        try:
            self._verify(cmd, now)
        except CommandRejected:
            raise
        except Exception:  # wrong types in an unvalidated object, a value the canonical JSON cannot carry
            raise CommandRejected("malformed") from None

    def _verify(self, cmd: ControlCommand, now: float) -> None:
        if not isinstance(cmd, ControlCommand):
            raise CommandRejected("malformed")
        self.keyring.check_signature(cmd)
        if not (math.isfinite(cmd.issued_at) and math.isfinite(cmd.expires_at)):
            raise CommandRejected("malformed")
        if cmd.expires_at <= now:
            raise CommandRejected("expired")
        if cmd.issued_at > now + MAX_SKEW_S:
            raise CommandRejected("issued in the future")
        if cmd.command_id in self._seen:
            raise CommandRejected("replayed")
        self._seen[cmd.command_id] = None
        if len(self._seen) > self.max_seen:
            del self._seen[next(iter(self._seen))]


def make_command(action: Literal["kill", "release"], scope: Scope,
                 target: str, reason: str, ttl_s: float, issued_by: str, *, keyring: Keyring,
                 alert_id: str | None = None, workflow: str | None = None,
                 now: float | None = None) -> ControlCommand:
    """A signed command valid for `ttl_s` from `now` (wall clock: guards compare with theirs)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
    issued_at = time.time() if now is None else now
    return keyring.sign(ControlCommand(
        command_id=str(uuid.uuid4()), action=action, scope=scope, target=target, reason=reason,
        issued_at=issued_at, expires_at=issued_at + ttl_s, issued_by=issued_by, alert_id=alert_id,
        workflow=workflow))
