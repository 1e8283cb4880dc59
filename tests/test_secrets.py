"""Secrets never leak: the demo, at debug log level, with recognisable fake secrets for every sink,
the control keys and the Kafka password, must not print them nor write them to any topic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from streams.broker import EmbeddedBroker
from streams.kafka_security import KafkaSecurity
from streams.secrets import redact, register
from streams.sinks import DeliveryError
from streams.sinks.pagerduty import PagerDutySink
from streams.sinks.slack import SlackSink
from streams.sinks.webhook import WebhookSink
from tests.conftest import ROOT
from tests.fakehttp import FakeHTTP
from tests.fakeslack import FakeSlack
from tests.kafka_io import read_all

SLACK_TOKEN = "xoxb-LEAKCANARY-slack-7f3a9c"
WEBHOOK_SECRET = "LEAKCANARY-hook-b81e22"
PD_KEY = "R0LEAKCANARYpagerduty00000000000"
CONTROL_SECRET = "LEAKCANARY-hmac-5d0c4e9a1b"
KAFKA_PASSWORD = "LEAKCANARY-sasl-91ab3f"
SECRETS = (SLACK_TOKEN, WEBHOOK_SECRET, PD_KEY, CONTROL_SECRET, KAFKA_PASSWORD)


def test_sinks_and_settings_hold_secrets_masked():
    hook = WebhookSink(f"http://127.0.0.1:9/hook?token={WEBHOOK_SECRET}")
    pd = PagerDutySink(PD_KEY)
    slack = SlackSink(token=SLACK_TOKEN, channel="#c")
    sec = KafkaSecurity(protocol="SASL_PLAINTEXT", username="svc", password=SecretStr(KAFKA_PASSWORD))
    shown = " ".join(map(repr, (hook, pd, slack, sec, hook.url, pd.routing_key, vars(hook), vars(pd), vars(sec))))
    assert not [s for s in SECRETS if s in shown]
    assert isinstance(hook.url, SecretStr) and isinstance(pd.routing_key, SecretStr)


def test_a_sink_error_carrying_a_url_is_masked():
    register(WEBHOOK_SECRET)
    err = DeliveryError(f"webhook unreachable: ClientError('http://h/hook?token={WEBHOOK_SECRET}')", True)
    assert WEBHOOK_SECRET not in str(err) and "***" in str(err)
    assert redact(f"x {WEBHOOK_SECRET} y") == "x *** y"


def test_webhook_error_names_no_secret():
    """A real failed POST (nothing listens on port 9): its error message has no URL secret in it."""
    sink = WebhookSink(f"http://127.0.0.1:9/hook?token={WEBHOOK_SECRET}", timeout_s=2)

    async def go() -> str:
        try:
            await sink._post(sink._target(), b"{}")
        except DeliveryError as err:
            return str(err)
        finally:
            await sink.close()
        return ""

    assert WEBHOOK_SECRET not in asyncio.run(go())


def _serve_fake_http() -> tuple[FakeHTTP, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fake = asyncio.run_coroutine_threadsafe(FakeHTTP(routing_key=PD_KEY).start(), loop).result(10)
    return fake, loop


async def _every_record(bootstrap: str) -> list[bytes]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        topics = await probe.topics()
    finally:
        await probe.stop()
    out: list[bytes] = []
    for topic in sorted(topics):
        for key, value in await asyncio.to_thread(read_all, bootstrap, topic):
            out += [topic.encode(), key or b"", value or b""]
    return out


def test_demo_at_debug_level_leaks_no_secret(tmp_path: Path):
    slack = FakeSlack(token=SLACK_TOKEN).start()
    fake, loop = _serve_fake_http()
    try:
        config = tmp_path / "spendwatch.toml"
        config.write_text(f'[slack]\nchannel = "#llm-spend"\nbase_url = "{slack.base_url}"\n'
                          f'[sinks]\npagerduty_base_url = "{fake.url}"\n'
                          '[routing]\ngroup_wait_s = 1\n')
        env = {**os.environ, "SLACK_BOT_TOKEN": SLACK_TOKEN,
               "SPENDWATCH_WEBHOOK_URL": f"{fake.url}/hook?token={WEBHOOK_SECRET}",
               "PAGERDUTY_ROUTING_KEY": PD_KEY, "SPENDWATCH_CONTROL_KEYS": f"demo:{CONTROL_SECRET}",
               "SPENDWATCH_KAFKA_PASSWORD": KAFKA_PASSWORD, "SPENDWATCH_KAFKA_USERNAME": "svc",
               "COLUMNS": "200"}
        with EmbeddedBroker() as broker:
            done = subprocess.run([sys.executable, "-m", "spendwatch", "demo", "--duration", "25", "--port", "0",
                                   "--log-level", "debug", "--config", str(config), "--broker", broker.url],
                                  cwd=ROOT, env=env, capture_output=True, timeout=90)
            records = asyncio.run(_every_record(broker.bootstrap))
        output = done.stdout + done.stderr
        assert done.returncode == 0, output.decode(errors="replace")[-3000:]
        assert b"alerts raised" in done.stdout
        assert len(output) > 10_000, "debug logging was on: the output must be long"
        assert slack.posted or fake.hooks or fake.events, "no sink was exercised: the check would prove nothing"
        assert len(records) > 100
        leaks = [(s, where) for s in SECRETS for where, blob in
                 (("output", output), ("topics", b"\n".join(records))) if s.encode() in blob]
        assert leaks == []
    finally:
        slack.stop()
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
