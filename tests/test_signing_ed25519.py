"""Ed25519 kill commands and scoped keys, without a broker: key files, what a guard holding only public keys
obeys, scopes, size and clock rules. The end-to-end kill on the embedded broker is in test_kill_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from schemas.control import MAX_TTL_S, ControlCommand
from schemas.signing import (
    MAX_COMMAND_BYTES,
    MAX_SKEW_S,
    CommandRejected,
    Keyring,
    KeyringError,
    Verifier,
    make_command,
    new_ed25519,
)
from spendwatch.cli import main
from spendwatch.guard import KillSet

NOW = 1_800_000_000.0


def pair(kid: str = "ops", **scope: Any) -> tuple[Keyring, Keyring]:
    """(signer's keyring, guard's keyring of the public key alone)."""
    private, public = new_ed25519(kid, **scope)
    return Keyring(entries=[_entry(private)]), Keyring(entries=[_entry(public)])


def _entry(d: dict[str, Any]):  # type: ignore[no-untyped-def]
    return Keyring.parse_json(json.dumps({"keys": [d]}), "test").entries[d["kid"]]


def cmd(ring: Keyring, action: str = "kill", scope: str = "run_id", target: str = "r-1", *,
        at: float = NOW, ttl: float = 600, **kw: Any) -> ControlCommand:
    return make_command(action, scope, target, "loop", ttl, "test", keyring=ring, now=at, **kw)  # type: ignore[arg-type]


def rejection(verifier: Verifier, c: ControlCommand, now: float = NOW) -> str | None:
    try:
        verifier.verify(c, now)
    except CommandRejected as err:
        return err.reason
    return None


# --- key files ---------------------------------------------------------------------------------------

def test_keys_generate_writes_a_private_file_only_its_owner_reads_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "generate", "--out", str(out), "--kid", "ops-1", "--workflows", "support,rag",
                 "--teams", "payments"]) == 0
    private, public = out / "ops-1.key", out / "ops-1.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert "private" not in public.read_text() and "private" in private.read_text()
    assert json.loads(public.read_text())["keys"][0] == {
        "kid": "ops-1", "alg": "ed25519", "public": json.loads(private.read_text())["keys"][0]["public"],
        "workflows": ["rag", "support"], "teams": ["payments"]}
    signer, guard = Keyring.load(private), Keyring.load(public)
    assert signer.signing_key_id == "ops-1" and guard.signing_key_id is None
    assert guard.entries["ops-1"].workflows == {"support", "rag"} and guard.entries["ops-1"].teams == {"payments"}
    before = private.read_bytes()
    assert main(["keys", "generate", "--out", str(out), "--kid", "ops-1"]) == 2
    assert "exists: refusing to overwrite" in capsys.readouterr().err and private.read_bytes() == before
    assert main(["keys", "generate", "--out", str(out)]) == 0  # a default kid: a second pair beside it
    assert len(list(out.glob("*.key"))) == 2


def test_rotation_several_public_keys_in_one_file_and_from_the_environment(tmp_path, monkeypatch):
    old_priv, old_pub = new_ed25519("old")
    new_priv, new_pub = new_ed25519("new")
    guard_file = tmp_path / "guard.pub"
    guard_file.write_text(json.dumps({"keys": [new_pub, old_pub]}))
    monkeypatch.setenv("SPENDWATCH_CONTROL_KEYS_FILE", str(guard_file))
    guard = Verifier(Keyring.load())
    for signer in (Keyring(entries=[_entry(old_priv)]), Keyring(entries=[_entry(new_priv)])):
        assert rejection(guard, cmd(signer)) is None
    monkeypatch.delenv("SPENDWATCH_CONTROL_KEYS_FILE")
    monkeypatch.setenv("SPENDWATCH_CONTROL_KEYS", json.dumps({"keys": [new_pub]}))  # the JSON in the variable
    assert list(Keyring.load().entries) == ["new"]


@pytest.mark.parametrize("entry,expected", [
    ({"kid": "k", "alg": "ed25519"}, "needs a private or a public key"),
    ({"kid": "k", "alg": "ed25519", "public": "bm90IDMyIGJ5dGVz"}, "public must be 32 bytes"),
    ({"kid": "k", "alg": "ed25519", "public": base64.b64encode(bytes(32)).decode(), "secret": "x"}, "not secret"),
    ({"kid": "k", "alg": "rsa", "public": "x"}, "alg must be ed25519 or hmac-sha256"),
    ({"kid": "k", "alg": "hmac-sha256"}, "needs a secret"),
    ({"kid": "k", "public": base64.b64encode(bytes(32)).decode(), "workflows": []}, "non-empty list"),
    ({"kid": "k", "publik": "x"}, "only kid, alg"),
])
def test_bad_key_files_say_what_is_wrong(entry, expected):
    with pytest.raises(KeyringError, match=expected):
        Keyring.parse_json(json.dumps({"keys": [entry]}), "f")


def test_a_public_key_that_is_not_the_private_keys_is_refused():
    private, _ = new_ed25519("k")
    _, other = new_ed25519("k")
    with pytest.raises(KeyringError, match="does not belong"):
        Keyring.parse_json(json.dumps({"keys": [{**private, "public": other["public"]}]}), "f")


def test_key_material_stays_out_of_repr():
    private, _ = new_ed25519("k")
    ring = Keyring.parse_json(json.dumps({"keys": [private, {"kid": "h", "alg": "hmac-sha256", "secret": "s3"}]}),
                              "f")
    assert private["private"] not in repr(ring.entries) + repr(ring) and "s3" not in repr(ring.entries)


# --- what a guard holding only the public key obeys ---------------------------------------------------

def test_a_guard_with_the_public_key_alone_accepts_genuine_commands_and_rejects_the_rest():
    signer, public = pair()
    guard = Verifier(public)
    genuine = cmd(signer)
    assert len(genuine.signature) == 128 and rejection(guard, genuine) is None
    assert rejection(guard, genuine) == "replayed"
    forger, _ = pair()  # a key of its own under the same id
    assert rejection(guard, cmd(forger)) == "bad signature"
    tampered = cmd(signer).model_copy(update={"target": "r-2"})
    assert rejection(guard, tampered) == "bad signature"
    assert rejection(guard, cmd(pair("elsewhere")[0])) == "unknown key id"
    assert rejection(guard, cmd(signer, at=NOW - 700)) == "expired"
    assert rejection(guard, cmd(signer).model_copy(update={"signature": ""})) == "unsigned"
    assert rejection(guard, cmd(signer).model_copy(update={"signature": genuine.signature[:64]})) == "bad signature"


def test_a_runtime_holding_the_public_key_cannot_make_a_command_another_runtime_obeys():
    signer, public = pair()
    runtime_a, runtime_b = public, Verifier(Keyring(entries=list(public.entries.values())))
    with pytest.raises(KeyringError, match="public keys only"):
        cmd(runtime_a)
    # what it might try instead: the public key as an HMAC secret, another command's signature, its own key
    raw_public = runtime_a.entries["ops"].public.public_bytes_raw()  # type: ignore[union-attr]
    as_secret = Keyring({"ops": raw_public})
    assert rejection(runtime_b, cmd(as_secret)) == "bad signature"
    hand_made = cmd(signer, target="r-other").model_copy(update={"target": "r-1", "command_id": "mine"})
    assert rejection(runtime_b, hand_made) == "bad signature"
    assert rejection(runtime_b, cmd(Keyring({"ops": b"anything"}))) == "bad signature"


def test_a_guard_with_ed25519_keys_refuses_hmac_commands_unless_told():
    signer, public = pair()
    hmac_ring = Keyring({"legacy": b"shared-secret"})
    mixed = Keyring({"legacy": b"shared-secret"}, entries=list(public.entries.values()))
    assert rejection(Verifier(mixed), cmd(hmac_ring)) == "hmac refused"
    assert rejection(Verifier(mixed), cmd(signer)) is None
    assert rejection(Verifier(mixed, allow_hmac=True), cmd(hmac_ring)) is None
    assert rejection(Verifier(hmac_ring), cmd(hmac_ring)) is None  # an HMAC-only guard: as before
    assert rejection(Verifier(hmac_ring, allow_hmac=False), cmd(hmac_ring)) == "hmac refused"


def test_hmac_signatures_of_commands_without_a_team_are_what_they_always_were():
    """`team` joined the signed body only when set: a guard still accepts commands of older signers."""
    ring = Keyring({"k1": b"secret"})
    c = cmd(ring)
    body = {k: v for k, v in c.model_dump().items() if k not in ("signature", "team")}
    old = hmac.new(b"secret", json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                   hashlib.sha256).hexdigest()
    assert c.signature == old


# --- scope -------------------------------------------------------------------------------------------

def test_a_key_restricted_to_workflows_stops_those_alone():
    signer, public = pair(workflows=["support"])
    guard = Verifier(public)
    assert rejection(guard, cmd(signer, scope="workflow", target="support")) is None
    assert rejection(guard, cmd(signer, scope="workflow", target="billing")) == "out of scope"
    assert rejection(guard, cmd(signer, target="r-9")) == "out of scope"  # a run of which workflow?
    assert rejection(guard, cmd(signer, target="r-9", workflow="billing")) == "out of scope"
    assert rejection(guard, cmd(signer, scope="workflow", target="support", workflow="billing")) == "out of scope"
    assert rejection(guard, cmd(signer, scope="workflow", target="support", team="payments")) is None
    kills = KillSet(Verifier(public))
    kills.apply(cmd(signer, target="r-1", workflow="support").model_dump_json().encode(), NOW)
    assert kills.find([("run_id", "r-1")], NOW, workflow="support") is not None
    # the key may not stop r-1 if it is another workflow's run, nor a call that does not say its workflow
    assert kills.find([("run_id", "r-1")], NOW, workflow="billing") is None
    assert kills.find([("run_id", "r-1")], NOW) is None


def test_a_key_restricted_to_teams_stops_runtimes_of_those_teams_alone():
    signer, public = pair(teams=["payments"])
    ours, theirs, unknown = (Verifier(public, team="payments"), Verifier(public, team="search"),
                             Verifier(public))
    c = cmd(signer, scope="workflow", target="checkout", team="payments")
    assert rejection(ours, c) is None
    assert rejection(theirs, c) == "out of scope" and rejection(unknown, c) == "out of scope"
    assert rejection(ours, cmd(signer, team="search")) == "out of scope"
    assert rejection(ours, cmd(signer)) == "out of scope"  # no team named: nothing to check it against


def test_an_unrestricted_key_stops_anything_as_before():
    signer, public = pair()
    guard = Verifier(public, team="search")
    assert rejection(guard, cmd(signer, scope="workflow", target="any", team="payments")) is None


def test_the_cli_refuses_to_sign_what_its_key_may_not_stop(tmp_path, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path), "--kid", "sup", "--workflows", "support"]) == 0
    capsys.readouterr()
    assert main(["kill", "--run", "r-1", "--reason", "x", "--keys-file", str(tmp_path / "sup.key"),
                 "--broker", "kafka://127.0.0.1:9"]) == 2
    assert "key sup may only stop workflows support: name the run's or agent's workflow with --of-workflow" \
        in capsys.readouterr().err
    assert main(["kill", "--run", "r-1", "--reason", "x", "--keys-file", str(tmp_path / "sup.pub"),
                 "--broker", "kafka://127.0.0.1:9"]) == 2
    assert "public keys only" in capsys.readouterr().err


# --- size and clocks ---------------------------------------------------------------------------------

def test_an_oversize_command_is_rejected_before_any_parsing_or_crypto():
    signer, public = pair()
    checked: list[ControlCommand] = []
    check = public.check_signature

    def spy(c: ControlCommand, allow_hmac: bool = True) -> Any:
        checked.append(c)
        return check(c, allow_hmac)

    public.check_signature = spy  # type: ignore[method-assign]
    kills = KillSet(Verifier(public))
    huge = cmd(signer).model_copy(update={"reason": "x" * MAX_COMMAND_BYTES}).model_dump_json().encode()
    kills.apply(huge, NOW)
    assert kills.rejected == {"oversize": 1} and checked == []
    kills.apply(cmd(signer).model_dump_json().encode(), NOW)  # a genuine one does reach the crypto
    assert len(checked) == 1 and kills.find([("run_id", "r-1")], NOW) is not None


def test_make_command_shortens_a_huge_reason_so_what_it_signs_always_fits():
    signer, public = pair()
    c = make_command("kill", "run_id", "r", "y" * 100_000, 60, "t", keyring=signer, now=NOW)
    assert len(c.model_dump_json()) < MAX_COMMAND_BYTES and c.reason.endswith("\u2026")
    assert rejection(Verifier(public), c) is None


@pytest.mark.parametrize("fast_by,expected", [(240, None), (MAX_SKEW_S - 1, None), (360, "issued in the future")])
def test_a_release_signed_by_a_fast_clock(fast_by, expected):
    """Skew rule: a command issued up to MAX_SKEW_S (5 min) ahead of the guard's clock is obeyed."""
    signer, public = pair()
    kills = KillSet(Verifier(public))
    kills.apply(cmd(signer, at=NOW - 60).model_dump_json().encode(), NOW)
    kills.apply(cmd(signer, "release", at=NOW + fast_by, ttl=MAX_TTL_S).model_dump_json().encode(), NOW)
    assert (kills.find([("run_id", "r-1")], NOW) is None) == (expected is None)
    assert kills.rejected == ({} if expected is None else {expected: 1})


def test_a_fast_clocks_release_does_not_hold_off_the_next_kill():
    """A command counts as issued no later than when the guard took it: a release stamped 4 min ahead and
    a kill a minute later from a correct clock leave the target killed."""
    signer, public = pair()
    kills = KillSet(Verifier(public))
    kills.apply(cmd(signer, "release", at=NOW + 240, ttl=MAX_TTL_S).model_dump_json().encode(), NOW)
    kills.apply(cmd(signer, at=NOW + 60).model_dump_json().encode(), NOW + 60)
    assert kills.find([("run_id", "r-1")], NOW + 60) is not None
    # an older kill arriving late (a delayed retry) still loses to a release issued after it
    kills.apply(cmd(signer, "release", at=NOW + 100, ttl=MAX_TTL_S).model_dump_json().encode(), NOW + 100)
    kills.apply(cmd(signer, at=NOW + 90).model_dump_json().encode(), NOW + 110)
    assert kills.find([("run_id", "r-1")], NOW + 110) is None and kills.rejected == {"superseded": 1}


def test_replay_rule_a_command_id_is_obeyed_once_even_re_signed_fields_aside():
    signer, public = pair()
    guard = Verifier(public)
    c = cmd(signer)
    assert rejection(guard, c) is None
    assert rejection(guard, c, now=NOW + 30) == "replayed"
    assert rejection(Verifier(public), c, now=NOW + 30) is None  # a fresh guard obeys it: it is still current


def test_the_key_files_are_found_in_a_path(tmp_path: Path):
    private, _ = new_ed25519("k")
    path = tmp_path / "k.key"
    path.write_text(json.dumps({"keys": [private]}))
    assert Keyring.load(path).signing_key_id == "k"


# --- the worker signs with the private key -----------------------------------------------------------

async def test_the_worker_policy_signs_kills_a_public_key_guard_obeys_and_names_the_team_for_team_keys():
    from tests.test_stages import KILL_RUNS, loop_alert, publisher

    for scope, team in (({"workflows": ["support"]}, None), ({"teams": ["payments"]}, "payments")):
        signer, public = pair(**scope)
        pub, topics = publisher(KILL_RUNS, signer)
        alert = loop_alert().model_copy(update={"team": "payments"})
        await pub.publish([alert])
        sent = ControlCommand.model_validate_json(topics.sent[0][2])
        assert sent.team == team  # only a team-restricted key puts the team in the command
        kills = KillSet(Verifier(public, team="payments"))
        kills.apply(topics.sent[0][2], sent.issued_at)
        assert kills.find([("run_id", "r-1")], sent.issued_at, workflow="support") is not None


def test_a_worker_with_public_keys_only_does_not_start(tmp_path):
    from spendwatch.runner import signing_keyring

    _, public = new_ed25519("k")
    path = tmp_path / "k.pub"
    path.write_text(json.dumps({"keys": [public]}))
    with pytest.raises(KeyringError, match="public keys only; the worker signs kills"):
        signing_keyring(path)
