"""Real processes: `spendwatch broker` stops its Tansu child on a signal; a worker waits for Kafka to appear."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, _reachable, free_port
from streams.workflow_table import state_key
from tests.conftest import wait_for
from tests.kafka_io import create_topic, publish, read_all


def children(pid: int) -> list[int]:
    """Child pids of `pid`, from /proc (Linux)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_stops_its_tansu_child_on_a_signal(spawn, tmp_path, sig):
    port = free_port()
    proc = spawn("broker", "--port", str(port), log="broker.log")
    wait_for(lambda: "listening on" in read(tmp_path / "broker.log"), 30, "the broker to listen",
             describe=lambda: read(tmp_path / "broker.log"))
    tansu = children(proc.pid)
    assert len(tansu) == 1 and alive(tansu[0]) and _reachable(port)
    proc.send_signal(sig)
    assert proc.wait(15) == 0
    wait_for(lambda: not alive(tansu[0]), 5, f"Tansu (pid {tansu[0]}) to be gone")
    assert not _reachable(port)


def test_worker_started_before_kafka_waits_for_it_then_works(spawn, tmp_path):
    """No broker at first: the worker says what it waits for and stays up (it used to exit in 2 s
    with a traceback); once a broker listens on that port it starts and processes events."""
    port = free_port()
    proc = spawn("worker", "--broker", f"kafka://127.0.0.1:{port}", log="worker.log")
    log = tmp_path / "worker.log"
    wait_for(lambda: f"waiting for Kafka at 127.0.0.1:{port} (attempt 3" in read(log), 30,
             "the worker to say it waits for Kafka", describe=lambda: read(log)[-2000:])
    time.sleep(3)
    assert proc.poll() is None, read(log)
    assert "Traceback" not in read(log)
    with EmbeddedBroker(port=port) as broker:
        for topic in ("spendwatch.usage", "spendwatch.alerts"):
            create_topic(broker.bootstrap, topic)
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        publish(broker.bootstrap, "spendwatch.usage", [(probe.encode(), (
            '{"type":"usage","event_id":"%s","ts":%d,"workflow":"%s","model":"gpt-4o","input_tokens":1,'
            '"output_tokens":1}' % (probe, time.time(), probe)).encode())])
        wait_for(lambda: any(k == state_key(probe) for k, _ in
                             read_all(broker.bootstrap, "spendwatch-workflows-changelog")),
                 120, "the worker to process an event", describe=lambda: read(log)[-2000:])
        assert proc.poll() is None
        assert f"Kafka at 127.0.0.1:{port} is reachable" in read(log)
        proc.terminate()
        proc.wait(30)


def test_worker_gives_up_after_the_configured_wait(spawn, tmp_path):
    port = free_port()
    proc = spawn("worker", "--broker", f"kafka://127.0.0.1:{port}", log="worker.log",
                 env={"SPENDWATCH_KAFKA_WAIT": "3"})
    assert proc.wait(30) == 1
    out = read(tmp_path / "worker.log")
    assert f"spendwatch: error: Kafka at 127.0.0.1:{port} is still unreachable after 3 s" in out, out
    assert "Traceback" not in out
