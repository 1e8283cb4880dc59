"""Real processes: `spendwatch broker` stops its Tansu child on a signal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from streams.broker import _reachable, free_port
from tests.conftest import wait_for


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
