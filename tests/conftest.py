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
from tests.fakeslack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
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
