"""The README's example service runs as written: a real process, the real `openai` package against the fake
provider (tests/fakellm.py), its events on a real broker and a kill published with the real signer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pytest

from schemas.decode import validate_event
from schemas.signing import Keyring, make_command
from spendwatch.control import publish_command
from tests.conftest import ROOT
from tests.fakellm import FakeLLM, Reply
from tests.kafka_io import create_topic, read_all

pytest.importorskip("openai")


def test_the_sync_example_service_reports_spend_and_obeys_a_kill(fresh_broker):
    broker = fresh_broker
    create_topic(broker.bootstrap, "spendwatch.usage", 4)
    kill = make_command("kill", "run_id", "T-2", "looping", 600, "test", keyring=Keyring({"k1": b"s3cret"}))
    asyncio.run(publish_command(broker.url, "spendwatch.control", kill))
    usage = {"prompt_tokens": 800, "completion_tokens": 120, "total_tokens": 920,
             "prompt_tokens_details": {"cached_tokens": 512}}
    llm = FakeLLM().start().reply(Reply(usage=usage, text="Refund issued."), Reply(usage=usage, text="Shipped."))
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples/sync_service.py"), "T-1", "T-2", "T-3"], cwd=ROOT,
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SPENDWATCH_BROKER": broker.url,
                 "SPENDWATCH_CONTROL_KEYS": "k1:s3cret", "OPENAI_API_KEY": "sk-test",
                 "OPENAI_BASE_URL": f"{llm.url}/v1"})
    finally:
        llm.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "T-1: Refund issued." and lines[2] == "T-3: Shipped."
    assert lines[1].startswith("T-2: not answered, spend killed for run_id T-2: looping")
    assert lines[3] == "usage events sent: 2, dropped: 0"
    events = [validate_event(e) for _, v in read_all(broker.bootstrap, "spendwatch.usage") for e in orjson.loads(v)]
    assert sorted((e.run_id, e.workflow, e.team, e.service, e.input_tokens, e.cache_read_tokens, e.output_tokens)
                  for e in events) == [("T-1", "support-bot", "cx", "helpdesk", 800, 512, 120),
                                       ("T-3", "support-bot", "cx", "helpdesk", 800, 512, 120)]
