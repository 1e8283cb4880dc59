"""Real parts for tests: the embedded Tansu broker over TCP and a fake Slack over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.workflow_table import state_key
from tests.fakeslack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm's import must not fetch its price map


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own: no consumer group, changelog or alert left by other tests."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    slack = FakeSlack().start()
    yield slack
    slack.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m spendwatch ...` as a real process; killed at teardown. Output goes to tmp_path."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None, log: str = "proc.log") -> subprocess.Popen[bytes]:
        out = open(tmp_path / log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "spendwatch", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.5,
             describe: Callable[[], object] | None = None) -> object:
    deadline = time.monotonic() + timeout
    value: object = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    seen = describe() if describe else value
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {seen!r})")


def start_worker(spawn: Callable[..., subprocess.Popen[bytes]], broker: EmbeddedBroker, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a worker and return once it has processed a probe event of its own.

    Earlier tests on the shared broker leave changelog records behind and a dead
    member in the consumer group, so "the changelog has records" proves nothing.
    """
    import uuid

    from tests.kafka_io import create_topic, publish, read_all

    for topic in ("spendwatch.usage", "spendwatch.alerts"):
        create_topic(broker.bootstrap, topic)
    proc = spawn("worker", "--broker", broker.url, *args, env=env, log="worker.log")
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    publish(broker.bootstrap, "spendwatch.usage", [(probe.encode(), (
        '{"type":"usage","event_id":"%s","ts":%d,"workflow":"%s","model":"gpt-4o","input_tokens":1,'
        '"output_tokens":1}' % (probe, time.time(), probe)).encode())])
    wait_for(lambda: any(k == state_key(probe) for k, _ in read_all(broker.bootstrap, "spendwatch-workflows-changelog")),
             120, "the worker to process its probe event")
    return proc
