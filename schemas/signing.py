"""Signatures on kill/release commands (HMAC-SHA256 or Ed25519), and the checks a runtime applies before obeying one.

A command is signed over the canonical JSON (sorted keys) of every field but
`signature`, under a named key, so keys can rotate: a `Keyring` signs with its
first key that can sign and accepts all of them.

HMAC is the simple mode: every holder of the secret can sign. With Ed25519 the
signers (worker policy, `spendwatch kill/release`) hold private keys and the guards
only public ones, so a compromised runtime cannot forge a command another runtime
obeys. A guard whose keyring holds Ed25519 keys refuses HMAC commands unless told
`allow_hmac=True`. A key may be restricted to workflows and/or teams (`KeyEntry`):
a command outside its key's scope is refused even with a valid signature.

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

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from schemas.control import MAX_TTL_S, ControlCommand, Scope

KEYS_ENV = "SPENDWATCH_CONTROL_KEYS"
"""`kid:secret,...` HMAC keys, or the JSON of a key file (`{"keys": [...]}`)."""
KEYS_FILE_ENV = "SPENDWATCH_CONTROL_KEYS_FILE"
"""Path of a key file; wins over $SPENDWATCH_CONTROL_KEYS."""
MAX_SKEW_S = 300.0
"""A command issued further than this in the future is refused: its issuer's clock (or its author) lies."""
MAX_COMMAND_BYTES = 64 * 1024
"""A genuine command is well under 1 KiB (`make_command` caps the reason); a bigger record is refused before
it is parsed or any signature is checked."""
MAX_REASON_CHARS = 2000
"""`make_command` shortens a longer reason, so what it signs always fits `MAX_COMMAND_BYTES`."""
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
HEX_ED25519 = re.compile(r"[0-9a-fA-F]{128}")
Alg = Literal["hmac-sha256", "ed25519"]


class KeyringError(ValueError):
    """No usable keys; the message says how to configure them."""


class CommandRejected(Exception):
    """A command the guard must not obey; `reason` is a short, countable label."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeyEntry:
    """One key: an HMAC secret, an Ed25519 private key (signs and verifies) or an Ed25519 public key
    (verifies only); `workflows` / `teams`, when set, are all its commands may target."""

    kid: str
    alg: Alg
    secret: bytes | None = None
    private: Ed25519PrivateKey | None = None
    public: Ed25519PublicKey | None = None
    workflows: frozenset[str] | None = None
    teams: frozenset[str] | None = None

    def __repr__(self) -> str:  # never the key material
        return f"KeyEntry(kid={self.kid!r}, alg={self.alg!r}, can_sign={self.can_sign})"

    @property
    def can_sign(self) -> bool:
        return self.secret is not None or self.private is not None

    @property
    def restricted(self) -> bool:
        return self.workflows is not None or self.teams is not None


def _b64_key(value: object, what: str, source: str) -> bytes:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise KeyringError(f"{source}: {what} must be 32 bytes in base64")
    return raw


def _names(value: object, field: str, source: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise KeyringError(f"{source}: {field} must be a non-empty list of names")
    return frozenset(value)


def key_entry(d: Any, source: str) -> KeyEntry:
    """One `keys` item of a key file → a `KeyEntry`, or `KeyringError` saying what is wrong."""
    if not isinstance(d, dict):
        raise KeyringError(f"{source}: each key must be an object")
    unknown = set(d) - {"kid", "alg", "secret", "private", "public", "workflows", "teams"}
    kid = d.get("kid")
    if unknown or not isinstance(kid, str) or not kid.strip():
        raise KeyringError(f"{source}: each key needs a kid, and only kid, alg, secret, private, public, "
                           f"workflows, teams (got {sorted(d)})")
    workflows = _names(d.get("workflows"), "workflows", source)
    teams = _names(d.get("teams"), "teams", source)
    alg = d.get("alg", "ed25519")
    if alg == "hmac-sha256":
        if not isinstance(d.get("secret"), str) or not d["secret"].strip() or "private" in d or "public" in d:
            raise KeyringError(f"{source}: hmac-sha256 key {kid} needs a secret (and no private/public)")
        return KeyEntry(kid.strip(), "hmac-sha256", secret=d["secret"].strip().encode(),
                        workflows=workflows, teams=teams)
    if alg != "ed25519":
        raise KeyringError(f"{source}: key {kid}: alg must be ed25519 or hmac-sha256, not {alg!r}")
    if "secret" in d:
        raise KeyringError(f"{source}: ed25519 key {kid} takes private and/or public, not secret")
    private = None
    if d.get("private") is not None:
        private = Ed25519PrivateKey.from_private_bytes(_b64_key(d["private"], f"key {kid}: private", source))
    if d.get("public") is not None:
        public = Ed25519PublicKey.from_public_bytes(_b64_key(d["public"], f"key {kid}: public", source))
        if private is not None and private.public_key() != public:
            raise KeyringError(f"{source}: key {kid}: public does not belong to private")
    elif private is not None:
        public = private.public_key()
    else:
        raise KeyringError(f"{source}: ed25519 key {kid} needs a private or a public key")
    return KeyEntry(kid.strip(), "ed25519", private=private, public=public, workflows=workflows, teams=teams)


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
    # `team` joined the model later: left out when None, so commands signed before it still verify
    return orjson.dumps(cmd.model_dump(exclude={"signature"} | ({"team"} if cmd.team is None else set())),
                        option=orjson.OPT_SORT_KEYS)


class Keyring:
    """Keys by id; the first one that can sign signs, every one verifies (for rotation).

    `Keyring({"k1": b"secret"})` is the HMAC keyring of old; `Keyring(entries=[...])` takes any `KeyEntry`.
    """

    def __init__(self, keys: dict[str, bytes] | None = None, *, entries: list[KeyEntry] | None = None):
        all_entries = [KeyEntry(kid, "hmac-sha256", secret=secret) for kid, secret in (keys or {}).items()]
        all_entries += entries or []
        if not all_entries:
            # ($SPENDWATCH_CONTROL_KEYS_FILE goes unmentioned: scripts match this line)
            raise KeyringError(f"no control keys configured: set {KEYS_ENV}=kid:secret or --keys-file")
        self.entries: dict[str, KeyEntry] = {}
        for entry in all_entries:
            self.entries.setdefault(entry.kid, entry)
        self.keys = {e.kid: e.secret for e in self.entries.values() if e.secret is not None}
        """The HMAC secrets by key id."""
        self.signing_key_id: str | None = next((e.kid for e in self.entries.values() if e.can_sign), None)
        """The key that signs; None for a keyring of public keys (a guard's), which cannot sign."""

    def __repr__(self) -> str:
        return f"Keyring({', '.join(f'{e.kid}:{e.alg}' for e in self.entries.values())})"

    @property
    def has_ed25519(self) -> bool:
        return any(e.alg == "ed25519" for e in self.entries.values())

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
    def parse_json(cls, text: str, source: str) -> Keyring:
        """A key file: `{"keys": [{"kid": ..., "alg": "ed25519", "public"|"private": base64, "workflows": [...],
        "teams": [...]}, ...]}` (or `"alg": "hmac-sha256", "secret": ...`)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise KeyringError(f"{source}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or set(doc) != {"keys"}:
            raise KeyringError(f'{source}: a key file is {{"keys": [...]}}')
        return cls(entries=[key_entry(d, f"{source} key #{i + 1}") for i, d in enumerate(doc["keys"])])

    @classmethod
    def from_text(cls, text: str, source: str, sep: str = "\n") -> Keyring:
        """JSON if it starts with `{`, else `kid:secret` entries separated by `sep`."""
        if text.lstrip().startswith("{"):
            return cls.parse_json(text, source)
        return cls.parse(text.split(sep), source)

    @classmethod
    def load(cls, keys_file: Path | None = None) -> Keyring:
        """From `keys_file` if given, else the file named by $SPENDWATCH_CONTROL_KEYS_FILE, else
        $SPENDWATCH_CONTROL_KEYS. A file holds a JSON key file or one `kid:secret` per line; the
        variable holds the JSON or `kid:secret,...`."""
        if keys_file is None and os.environ.get(KEYS_FILE_ENV, "").strip():
            keys_file = Path(os.environ[KEYS_FILE_ENV].strip())
        if keys_file is not None:
            try:
                text = keys_file.read_text()
            except OSError as err:
                raise KeyringError(f"{keys_file}: cannot read keys file ({err.strerror})") from None
            return cls.from_text(text, str(keys_file))
        return cls.from_text(os.environ.get(KEYS_ENV, ""), KEYS_ENV, ",")

    def _digest(self, key_id: str, cmd: ControlCommand) -> str:
        return hmac.new(self.keys[key_id], _canonical(cmd), hashlib.sha256).hexdigest()

    def sign(self, cmd: ControlCommand) -> ControlCommand:
        """A copy of `cmd` signed with the signing key."""
        if self.signing_key_id is None:
            raise KeyringError("these control keys are public keys only: they verify commands but cannot sign "
                               "them (signers need the private key file)")
        entry = self.entries[self.signing_key_id]
        unsigned = cmd.model_copy(update={"key_id": entry.kid, "signature": ""})
        if entry.private is not None:
            signature = entry.private.sign(_canonical(unsigned)).hex()
        else:
            signature = self._digest(entry.kid, unsigned)
        return unsigned.model_copy(update={"signature": signature})

    def check_signature(self, cmd: ControlCommand, allow_hmac: bool = True) -> KeyEntry:
        """The key that signed `cmd`, or `CommandRejected`."""
        if not cmd.signature or not cmd.key_id:
            raise CommandRejected("unsigned")
        if not isinstance(cmd.key_id, str) or cmd.key_id not in self.entries:
            raise CommandRejected("unknown key id")
        entry = self.entries[cmd.key_id]
        if not isinstance(cmd.signature, str):
            raise CommandRejected("bad signature")
        if entry.public is not None:
            if not HEX_ED25519.fullmatch(cmd.signature):
                raise CommandRejected("bad signature")
            try:
                entry.public.verify(bytes.fromhex(cmd.signature), _canonical(cmd))
            except InvalidSignature:
                raise CommandRejected("bad signature") from None
            return entry
        if not allow_hmac:
            raise CommandRejected("hmac refused")
        # compare_digest raises TypeError on non-ASCII str: only 64 hex digits get that far
        if not HEX_DIGEST.fullmatch(cmd.signature):
            raise CommandRejected("bad signature")
        if not hmac.compare_digest(cmd.signature.lower().encode(), self._digest(cmd.key_id, cmd).encode()):
            raise CommandRejected("bad signature")
        return entry


class Verifier:
    """Signature, validity window, scope and replay checks; remembers the last `max_seen` command ids.

    `allow_hmac` (default: only if the keyring holds no Ed25519 key) says whether HMAC-signed commands
    may be obeyed. `team` is the team of the runtime this verifier guards: commands of a key restricted
    to teams apply only to runtimes of those teams.
    """

    def __init__(self, keyring: Keyring, max_seen: int = 100_000, *, allow_hmac: bool | None = None,
                 team: str | None = None):
        self.keyring = keyring
        self.max_seen = max_seen
        self.allow_hmac = not keyring.has_ed25519 if allow_hmac is None else allow_hmac
        self.team = team
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest id is forgotten first

    def verify(self, cmd: ControlCommand, now: float) -> str | None:
        """Raise `CommandRejected` (and nothing else) unless `cmd` is authentic, current, within its key's
        scope and new to this verifier. Returns the workflow a run or agent command is confined to (its
        key may stop only that workflow's calls), else None."""
        try:
            return self._verify(cmd, now)
        except CommandRejected:
            raise
        except Exception:  # wrong types in an unvalidated object, a value the canonical JSON cannot carry
            raise CommandRejected("malformed") from None

    def _verify(self, cmd: ControlCommand, now: float) -> str | None:
        if not isinstance(cmd, ControlCommand):
            raise CommandRejected("malformed")
        entry = self.keyring.check_signature(cmd, allow_hmac=self.allow_hmac)
        if not (math.isfinite(cmd.issued_at) and math.isfinite(cmd.expires_at)):
            raise CommandRejected("malformed")
        if cmd.expires_at <= now:
            raise CommandRejected("expired")
        if cmd.issued_at > now + MAX_SKEW_S:
            raise CommandRejected("issued in the future")
        confined = authorize(entry, cmd, self.team)
        if cmd.command_id in self._seen:
            raise CommandRejected("replayed")
        self._seen[cmd.command_id] = None
        if len(self._seen) > self.max_seen:
            del self._seen[next(iter(self._seen))]
        return confined


def authorize(entry: KeyEntry, cmd: ControlCommand, team: str | None = None) -> str | None:
    """May `entry` stop `cmd`'s target in a runtime of `team`? None if anywhere, the workflow a run or agent
    command is confined to (a key restricted to workflows), or `CommandRejected("out of scope")`.

    A key restricted to teams may stop anything in runtimes of those teams when the command names the
    team; a key restricted to workflows may stop those workflows, and the runs and agents of commands
    that name one of them (in calls of that workflow only).
    """
    if not entry.restricted:
        return None
    if cmd.scope == "workflow" and cmd.workflow is not None and cmd.workflow != cmd.target:
        raise CommandRejected("out of scope")  # which workflow would the key be stopping?
    if entry.teams is not None and cmd.team is not None and cmd.team in entry.teams and cmd.team == team:
        return None  # this runtime is of the key's team: the whole runtime is the key's to stop
    workflow = cmd.target if cmd.scope == "workflow" else cmd.workflow
    if entry.workflows is not None and workflow is not None and workflow in entry.workflows:
        return None if cmd.scope == "workflow" else workflow
    raise CommandRejected("out of scope")


def new_ed25519(kid: str, workflows: list[str] | None = None,
                teams: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh key pair as key file entries: (private entry, public entry)."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes_raw()
    raw_public = private.public_key().public_bytes_raw()
    scope: dict[str, Any] = {}
    if workflows:
        scope["workflows"] = sorted(set(workflows))
    if teams:
        scope["teams"] = sorted(set(teams))
    public = {"kid": kid, "alg": "ed25519", "public": base64.b64encode(raw_public).decode(), **scope}
    return {**public, "private": base64.b64encode(raw_private).decode()}, public


def make_command(action: Literal["kill", "release"], scope: Scope,
                 target: str, reason: str, ttl_s: float, issued_by: str, *, keyring: Keyring,
                 alert_id: str | None = None, workflow: str | None = None, team: str | None = None,
                 now: float | None = None) -> ControlCommand:
    """A signed command valid for `ttl_s` from `now` (wall clock: guards compare with theirs); a reason
    longer than `MAX_REASON_CHARS` is shortened."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
    issued_at = time.time() if now is None else now
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS - 1] + "\u2026"
    return keyring.sign(ControlCommand(
        command_id=str(uuid.uuid4()), action=action, scope=scope, target=target, reason=reason,
        issued_at=issued_at, expires_at=issued_at + ttl_s, issued_by=issued_by, alert_id=alert_id,
        workflow=workflow, team=team))
