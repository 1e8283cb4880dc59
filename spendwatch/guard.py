"""`KillSwitch`: the SDK guard an agent runtime puts in front of its LLM calls.

It follows the compacted control topic from the beginning in the background
(no consumer group: every runtime reads everything), keeps the latest verified
command per `scope:target`, and `check()` answers from memory in O(1), so the
guarded call never waits on Kafka. Unsigned, forged, unknown-key, expired and
replayed commands are ignored, logged and counted in `rejected`, and so is
every record that is not a command at all (invalid JSON, wrong types, a
non-hex signature, a tombstone, an oversize value), and so are commands
outside their key's scope and HMAC commands when the guard holds Ed25519
public keys (unless `allow_hmac=True`): one bad record on a
compacted topic must never stop the follower, or every guard would be blind.

>>> switch = KillSwitch("kafka://127.0.0.1:9092", keyring=Keyring.load())   # doctest: +SKIP
>>> await switch.start()                                                     # doctest: +SKIP
>>> @switch.protect(workflow="support-bot", run_id=arg("run_id"))            # doctest: +SKIP
... async def ask(prompt, run_id): return await client.responses.create(...)

Synchronous programs start it with `switch.start_thread()`: it then follows the
topic from a daemon thread of its own, and `check()` works from any thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.control import ControlCommand
from schemas.signing import CommandRejected, Keyring, Verifier, parse_command
from spendwatch.emitter import LoopThread, bootstrap_of
from streams.kafka_security import KafkaSecurity

log = logging.getLogger("spendwatch.guard")

P = ParamSpec("P")
T = TypeVar("T")
Key = tuple[str, str]
UNREACHABLE = "control plane unreachable"


class SpendKilled(Exception):
    """Raised instead of making an LLM call whose spend has been stopped."""

    def __init__(self, reason: str, *, scope: str | None = None, target: str | None = None,
                 alert_id: str | None = None, command_id: str | None = None):
        where = f"{scope} {target}: " if scope else ""
        super().__init__(f"spend killed for {where}{reason}" + (f" (alert {alert_id})" if alert_id else ""))
        self.reason, self.scope, self.target = reason, scope, target
        self.alert_id, self.command_id = alert_id, command_id

    @classmethod
    def by(cls, cmd: ControlCommand) -> SpendKilled:
        return cls(cmd.reason, scope=cmd.scope, target=cmd.target, alert_id=cmd.alert_id,
                   command_id=cmd.command_id)


class KillSet:
    """The latest verified command per (scope, target); a command older than the one held is ignored,
    so an old kill re-published after its release cannot come back."""

    def __init__(self, verifier: Verifier):
        self.verifier = verifier
        self.latest: dict[Key, ControlCommand] = {}
        self.confined: dict[Key, str] = {}
        """Run/agent commands of workflow-restricted keys: they stop only calls of this workflow."""
        self.order: dict[Key, float] = {}
        """When each held command counts as issued: its `issued_at`, but never later than when this guard
        took it, so a command stamped by a fast clock cannot hold off the next one for the skew it had."""
        self.rejected: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def apply(self, raw: bytes | None, now: float) -> None:
        """Obey the record if it is a genuine, current command; otherwise count why not. Never raises."""
        try:
            cmd = parse_command(raw)  # size first: an oversize record is refused before any parsing or crypto
            confined = self.verifier.verify(cmd, now)
            key = (cmd.scope, cmd.target)
            if key in self.latest and self.order[key] > cmd.issued_at:
                raise CommandRejected("superseded")
        except CommandRejected as err:
            self._reject(err.reason)
            return
        except Exception:  # a bug must cost one record, not the follower
            log.exception("spendwatch kill switch: unexpected error on a control record; ignored")
            self._reject("internal error")
            return
        self.latest[key] = cmd
        self.order[key] = min(cmd.issued_at, now)
        if confined is None:
            self.confined.pop(key, None)
        else:
            self.confined[key] = confined

    def _reject(self, reason: str) -> None:
        """Count, and log each reason at most once a minute: a flood of garbage must not flood the log."""
        self.rejected[reason] += 1
        at = time.monotonic()
        if at - self._logged_at.get(reason, float("-inf")) >= 60:
            self._logged_at[reason] = at
            # expired commands are mostly history replayed at start, not an attack
            log.log(logging.INFO if reason == "expired" else logging.WARNING,
                    "spendwatch kill switch ignored a control command: %s (%d so far)", reason,
                    self.rejected[reason])

    def find(self, keys: list[Key], now: float, workflow: str | None = None) -> ControlCommand | None:
        """The kill in force for any of `keys` (in a call of `workflow`); expired kills are dropped as
        they are met."""
        for key in keys:
            cmd = self.latest.get(key)
            if cmd is None or cmd.action != "kill":
                continue
            if key in self.confined and self.confined[key] != workflow:
                continue  # its key may stop only that workflow's runs and agents
            if cmd.expires_at > now:
                return cmd
            self.latest.pop(key, None)
            self.order.pop(key, None)
            self.confined.pop(key, None)
        return None

    def active(self, now: float) -> list[ControlCommand]:
        return [c for c in list(self.latest.values()) if c.action == "kill" and c.expires_at > now]


class arg:  # noqa: N801 -- used like a function: protect(run_id=arg("run_id"))
    """A kill-switch target taken from the guarded call's own arguments: `arg("run_id")` is the
    argument named `run_id` (passed by position or keyword, or its default), `arg("task.run_id")`
    the `run_id` attribute (or key) of the argument `task`. None (or a missing attribute) checks
    nothing for that scope."""

    def __init__(self, path: str):
        self.path = path
        self.name, *self.attrs = path.split(".")

    def __repr__(self) -> str:
        return f"arg({self.path!r})"

    def resolver(self, sig: inspect.Signature, fn_name: str) -> Callable[..., str | None]:
        """A function of the call's (*args, **kwargs) that returns the target; TypeError now if `fn`
        has no such argument."""
        params = sig.parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if self.name not in params and not var_kw:
            raise TypeError(f"protect(): {fn_name}() has no argument {self.name!r} for {self!r}")

        def resolve(*args: Any, **kwargs: Any) -> str | None:
            bound = sig.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            if self.name in params and params[self.name].kind is not inspect.Parameter.VAR_KEYWORD:
                value = bound.arguments.get(self.name)
            else:
                value = kwargs.get(self.name)
            for attr in self.attrs:
                if value is None:
                    break
                value = value.get(attr) if isinstance(value, dict) else getattr(value, attr, None)
            return None if value is None else str(value)
        return resolve


Target = str | arg | Callable[..., "str | None"] | None
"""What `protect()` checks per scope: a fixed name, `arg("name")` of the call, or a function of the
call's arguments (`lambda *a, **kw: kw["run_id"]`); None checks nothing."""


class _Guard:
    """`with switch.guard(run_id=...)` / `async with ...`: check once on entry."""

    def __init__(self, switch: KillSwitch, targets: dict[str, str | None]):
        self.switch, self.targets = switch, targets

    def __enter__(self) -> None:
        self.switch.check(**self.targets)

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None


class _Protect:
    """`@switch.protect(run_id=...)`: a sync or async function, checked on each call, with targets fixed
    or taken from the call's arguments."""

    def __init__(self, switch: KillSwitch, targets: dict[str, Target]):
        unknown = set(targets) - {"workflow", "agent_id", "run_id"}
        if unknown:
            raise TypeError(f"protect() targets are workflow, agent_id and run_id, not {sorted(unknown)}")
        self.switch, self.targets = switch, targets

    def _targets_of(self, fn: Callable[..., Any]) -> Callable[..., dict[str, str | None]]:
        fixed = {k: v for k, v in self.targets.items() if v is None or isinstance(v, str)}
        dynamic: dict[str, Callable[..., str | None]] = {}
        for scope, target in self.targets.items():
            if isinstance(target, arg):
                dynamic[scope] = target.resolver(inspect.signature(fn), getattr(fn, "__name__", "function"))
            elif target is not None and not isinstance(target, str):
                if not callable(target):
                    raise TypeError(f"protect({scope}=...) takes a name, arg(...) or a function, "
                                    f"not {type(target).__name__}")
                dynamic[scope] = target
        if not dynamic:
            return lambda *args, **kwargs: fixed

        def targets(*args: Any, **kwargs: Any) -> dict[str, str | None]:
            out = dict(fixed)
            for scope, get in dynamic.items():
                value = get(*args, **kwargs)
                out[scope] = None if value is None else str(value)
            return out
        return targets

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        targets = self._targets_of(fn)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                self.switch.check(**targets(*args, **kwargs))
                return await fn(*args, **kwargs)
            return run_async

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            self.switch.check(**targets(*args, **kwargs))
            return fn(*args, **kwargs)
        return run


class KillSwitch:
    """Obeys signed kill/release commands for workflows, agents and runs.

    While the control plane is unreachable or not caught up (`healthy` is
    False), `check()` fails open by default (known kills still apply; a warning
    is logged once a minute) or, with `fail_closed=True`, refuses every call.

    `keyring` holds the keys that verify commands: public Ed25519 keys (then HMAC commands are refused
    unless `allow_hmac=True`) or HMAC secrets. `team` is this runtime's team, for keys restricted to teams.
    """

    def __init__(self, broker: str, topic: str = "spendwatch.control", *, keyring: Keyring,
                 fail_closed: bool = False, stale_after: float = 30.0, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.time, allow_hmac: bool | None = None,
                 team: str | None = None, security: KafkaSecurity | None = None):
        self.broker, self.topic = broker, topic
        self.security = security if security is not None else KafkaSecurity.from_env()
        """SASL/TLS settings; by default the SPENDWATCH_KAFKA_* variables (none set: plaintext)."""
        self._security_kwargs = self.security.aiokafka_kwargs()
        self.fail_closed, self.stale_after, self.poll_s = fail_closed, stale_after, poll_s
        self.clock = clock
        self.kills = KillSet(Verifier(keyring, allow_hmac=allow_hmac, team=team))
        self.ready = False
        """True once the guard has read the control topic up to its end offsets."""
        self._synced_at = float("-inf")  # monotonic time the guard was last caught up
        self._warned_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._ready_event = asyncio.Event()
        self._thread: LoopThread | None = None

    @property
    def rejected(self) -> Counter[str]:
        """Ignored commands by reason: unsigned, unknown key id, bad signature, expired, replayed, ..."""
        return self.kills.rejected

    @property
    def healthy(self) -> bool:
        return self.ready and time.monotonic() - self._synced_at < self.stale_after

    async def start(self, wait: float = 5.0) -> bool:
        """Start following the control topic; wait up to `wait` s to catch up. Returns `ready`."""
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.wait_for(self._ready_event.wait(), wait)
        except TimeoutError:
            pass  # check() says so, loudly, when it is called
        return self.ready

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def start_thread(self, wait: float = 5.0) -> bool:
        """`start()` for synchronous programs: follow the control topic from a daemon thread with an
        event loop of its own; wait up to `wait` s to catch up. Returns `ready`; idempotent."""
        if self._thread is None:
            self._thread = LoopThread("spendwatch-killswitch")
            self._thread.call(self.start(wait=0), 10.0)
        deadline = time.monotonic() + wait
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ready

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread of `start_thread()`; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.call(self.stop(), timeout)
            finally:
                thread.close()

    def check(self, workflow: str | None = None, agent_id: str | None = None, run_id: str | None = None) -> None:
        """Raise `SpendKilled` if any given target is killed (or, fail-closed, if the guard is blind)."""
        if not self.healthy:
            self._blind()
        keys = [(scope, target) for scope, target in
                (("workflow", workflow), ("agent_id", agent_id), ("run_id", run_id)) if target is not None]
        cmd = self.kills.find(keys, self.clock(), workflow)
        if cmd:
            raise SpendKilled.by(cmd)

    def active(self) -> list[ControlCommand]:
        """The kills in force now."""
        return self.kills.active(self.clock())

    def guard(self, **targets: str | None) -> _Guard:
        """A sync and async context manager that checks `targets` on entry."""
        return _Guard(self, targets)

    def protect(self, **targets: Target) -> _Protect:
        """Decorate a (sync or async) function that spends: each call is checked first. A target is a
        fixed name, `arg("run_id")` / `arg("task.run_id")` of the call, or a function of the call's
        arguments (`run_id=lambda *a, **kw: kw["run_id"]`)."""
        return _Protect(self, targets)

    def _blind(self) -> None:
        if self.fail_closed:
            raise SpendKilled(UNREACHABLE)
        if time.monotonic() - self._warned_at >= 60:
            self._warned_at = time.monotonic()
            log.warning("spendwatch kill switch: %s (%s on %s); allowing calls not already known to be "
                        "killed (fail open)", UNREACHABLE, self.topic, self.broker)

    def _synced(self) -> None:
        self.ready = True
        self._synced_at = time.monotonic()
        self._ready_event.set()

    async def _run(self) -> None:
        consumer = await self._connect()
        tps: list[TopicPartition] = []
        try:
            while True:
                try:
                    tps = tps or await self._assign(consumer)
                    await (self._follow(consumer, tps) if tps else asyncio.sleep(self.poll_s))
                except (TimeoutError, KafkaError) as err:
                    log.debug("control topic poll failed: %r", err)
                    await asyncio.sleep(self.poll_s)
                except Exception:  # keep following: a dead follower would blind this guard for good
                    log.exception("spendwatch kill switch: unexpected error following %s; retrying", self.topic)
                    await asyncio.sleep(self.poll_s)
        finally:
            await consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        backoff = self.poll_s
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(self.broker), enable_auto_commit=False,
                                        auto_offset_reset="earliest", request_timeout_ms=10_000,
                                        **self._security_kwargs)
            try:
                await consumer.start()
                return consumer
            except Exception as err:  # unreachable (KafkaError) or anything else: keep trying
                await consumer.stop()
                log.log(logging.DEBUG if isinstance(err, KafkaError) else logging.WARNING,
                        "cannot reach the control plane: %r", err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """All partitions of the topic from offset 0; none (yet) if it does not exist: nothing to obey."""
        # no public call refreshes the consumer's own metadata for a topic it is not assigned yet
        if not await asyncio.wait_for(consumer._client.force_metadata_update(), 10):
            raise KafkaError("metadata update failed")
        tps = [TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or ())]
        if not tps:
            self._synced()
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return tps

    async def _follow(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """One round: note the end offsets, fetch what is there (or wait `poll_s`), mark caught up."""
        end = await asyncio.wait_for(consumer.end_offsets(tps), 10)
        batch = await consumer.getmany(*tps, timeout_ms=int(self.poll_s * 1000))
        for records in batch.values():
            for rec in records:
                self.kills.apply(rec.value, self.clock())  # counts tombstones and garbage; never raises
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= end[tp] for pos, tp in zip(positions, tps)):
            self._synced()
