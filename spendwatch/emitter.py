"""`UsageEmitter`: publish usage events from a service without ever hurting its LLM calls.

`emit()` is synchronous, O(1) and never raises: it encodes the event to JSON
(so a value JSON cannot carry is refused there, counted in `invalid`, instead
of poisoning the sender later) and appends it to a bounded buffer. A
background task sends JSON arrays (one Kafka record per workflow per flush,
keyed by workflow). When Kafka is down the buffer fills, then new events are
dropped and counted in `dropped`: the caller's request path is never blocked,
and delivery resumes by itself when Kafka is back.

The producer and the sender task belong to the event loop the emitter runs
on, bound at `start()` or at the first `emit()` from inside a running loop,
so an emitter constructed outside any loop (at import time, in another
`asyncio.run`) works; one still running on a loop in another thread refuses
to start on a second loop (`RuntimeError`) rather than losing events.

Synchronous programs (scripts, Flask/Django workers, thread pools) call
`start_thread()` (or use the emitter as a `with` block): the emitter then sends
from a daemon thread running an event loop of its own, `emit()` may be called
from any thread, and `close()` — or the interpreter's exit — flushes what is
buffered. The asyncio path is unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import CorruptRecordException, KafkaError, MessageSizeTooLargeError

from schemas.limits import MAX_RECORD_BYTES
from streams.kafka_security import KafkaSecurity

log = logging.getLogger("spendwatch.emitter")

Item = tuple[bytes, bytes]
"""(Kafka key = workflow, the event's JSON)."""
REFUSED_RECORD = (MessageSizeTooLargeError, CorruptRecordException)
"""Broker errors about one record that a retry cannot fix: the record is dropped (`invalid`), not retried."""
LOG_EVERY_S = 60.0
T = TypeVar("T")


def bootstrap_of(broker: str) -> str:
    """`kafka://host:port[,host:port]` or `host:port` → aiokafka's bootstrap string."""
    return ",".join(part.split("://", 1)[-1] for part in broker.split(","))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LoopThread:
    """An event loop running in a daemon thread: how synchronous programs run the SDK's asyncio parts
    (the emitter's producer, the kill switch's follower)."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the thread's loop and wait for its result (at most `timeout` s)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


class UsageEmitter:
    """
    >>> async def handler(emitter):                                 # doctest: +SKIP
    ...     emitter.emit(usage_from_openai(resp, workflow="support-bot"))

    From synchronous code, a background thread sends:

    >>> with UsageEmitter("kafka://127.0.0.1:9092").start_thread() as emitter:   # doctest: +SKIP
    ...     emitter.emit(usage_from_openai(client.chat.completions.create(...), workflow="support-bot"))

    Counters: `sent`; `dropped` (buffer full); `invalid` (not a JSON-encodable dict,
    larger than one record may be, or refused by the broker as a record).
    """

    def __init__(self, broker: str, topic: str = "spendwatch.usage", *, max_buffer: int = 100_000,
                 max_batch: int = 500, linger: float = 0.05, security: KafkaSecurity | None = None,
                 **producer_kwargs: Any):
        self.bootstrap = bootstrap_of(broker)
        self.security = security if security is not None else KafkaSecurity.from_env()
        """SASL/TLS settings; by default the SPENDWATCH_KAFKA_* variables (none set: plaintext)."""
        self._security_kwargs = self.security.aiokafka_kwargs()  # a bad CA/key file fails here, not later
        self.topic = topic
        self.max_batch = max_batch
        self.linger = linger
        # what the worker accepts and the producer may send, with room for the record's own overhead
        self.max_record_bytes = min(MAX_RECORD_BYTES, producer_kwargs.get("max_request_size", 1_048_576) - 1024)
        self.buffer: deque[Item] = deque()
        self.max_buffer = max_buffer
        """Events held at most, buffered plus in flight: the memory bound during an outage."""
        self.dropped = 0
        self.invalid = 0
        self.sent = 0
        self.producer_kwargs = producer_kwargs
        # bound to a loop by _bind(): aiokafka objects belong to the loop they are created on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._started = False
        self._inflight = 0
        self._logged_at: dict[str, float] = {}
        self._thread: LoopThread | None = None

    async def start(self) -> None:
        """Start sending from the running loop (emit() also does this on its first call inside a loop)."""
        self._bind(asyncio.get_running_loop())

    def emit(self, event: dict[str, Any]) -> bool:
        """Queue one event; False if it is invalid (`invalid`) or the buffer is full (`dropped`). Never raises."""
        loop = _running_loop()
        if loop is not None and loop is not self._loop:
            try:
                self._bind(loop)
            except RuntimeError:
                pass  # running on a loop in another thread: that sender will pick the event up
        if self.pending >= self.max_buffer:
            self.dropped += 1
            self._log_limited("dropped", "spendwatch emitter buffer full (%d events): %d dropped so far",
                              self.max_buffer, self.dropped)
            return False
        try:
            if type(event) is not dict:
                raise TypeError(f"an event is a dict, not {type(event).__name__}")
            # a copy: orjson's own result keeps ~4 KiB of spare capacity, 25x this event in a full buffer
            value = memoryview(orjson.dumps(event)).tobytes()
            if len(value) + 2 > self.max_record_bytes:
                raise ValueError(f"{len(value)} bytes encoded, more than a record may hold")
            key = str(event.get("workflow", "")).encode()
        except Exception as err:  # any value JSON cannot carry: the caller must not pay for it
            self.invalid += 1
            self._log_limited("invalid", "spendwatch emitter dropped an invalid event (%s); %d invalid so far",
                              err, self.invalid)
            return False
        self.buffer.append((key, value))
        if len(self.buffer) >= self.max_batch and self._wake is not None:
            if loop is self._loop:
                self._wake.set()
            elif len(self.buffer) == self.max_batch and self._thread is not None:
                try:  # a full batch waits for the sender thread's next linger otherwise
                    self._thread.loop.call_soon_threadsafe(self._wake.set)
                except RuntimeError:
                    pass  # its loop is closing
        return True

    def start_thread(self) -> UsageEmitter:
        """Send from a background thread with an event loop of its own, for synchronous programs:
        `emit()` may then be called from any thread (and from any event loop), and `close()` or the
        interpreter's exit flushes what is buffered. Returns the emitter; idempotent. `RuntimeError`
        if the emitter already runs on an event loop of another thread."""
        if self._thread is None:
            thread = LoopThread("spendwatch-emitter")
            try:
                thread.call(self.start(), 10.0)
            except BaseException:
                thread.close()
                raise
            self._thread = thread
            atexit.register(self.close)
        return self

    def flush_sync(self, timeout: float = 30.0) -> None:
        """`flush()` for synchronous code, after `start_thread()`: block until everything buffered is sent
        (or `timeout`)."""
        if self._thread is None:
            raise RuntimeError("flush_sync() needs start_thread(); in asyncio code, await flush()")
        self._thread.call(self.flush(timeout), timeout + 5.0)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to `timeout` s) and stop the background thread of `start_thread()`; idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        atexit.unregister(self.close)
        try:
            thread.call(self.stop(timeout), timeout + 5.0)
        except Exception as err:  # the program is ending or the loop is wedged: say what is lost
            log.warning("spendwatch emitter: close() did not finish (%r); %d events not confirmed", err,
                        self.pending)
        finally:
            thread.close()

    def __enter__(self) -> UsageEmitter:
        return self.start_thread()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def put(self, event: dict[str, Any]) -> bool:
        """`emit`, but waits for room instead of dropping: back-pressure for batch publishers
        (`spendwatch emit`), where waiting costs nothing and a drop loses spend."""
        self._bind(asyncio.get_running_loop())
        while self.pending >= self.max_buffer:
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.005)
        return self.emit(event)

    @property
    def pending(self) -> int:
        """Events accepted but not yet confirmed by Kafka."""
        return len(self.buffer) + self._inflight

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything buffered has been sent (or `timeout`)."""
        loop = asyncio.get_running_loop()
        if self.buffer:
            self._bind(loop)
        deadline = loop.time() + timeout
        while (self.buffer or self._inflight) and loop.time() < deadline:
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.01)
        if self._started and self._producer is not None:
            await self._producer.flush()

    async def stop(self, timeout: float = 10.0) -> None:
        await self.flush(timeout=timeout)
        if self._loop is asyncio.get_running_loop():  # else they belong to a loop that is gone
            if self._task:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            if self._producer is not None:
                await self._producer.stop()  # also closes a producer that never reached Kafka
        self._loop = self._producer = self._task = self._wake = None
        self._started = False

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Own a producer and a sender task on `loop`, leaving a previous loop that no longer runs."""
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._loop is not None and self._loop is not loop:
            if self._loop.is_running():
                raise RuntimeError("this UsageEmitter is running on an event loop in another thread; "
                                   "create one emitter per event loop")
            log.warning("spendwatch emitter: its event loop changed; restarting its sender on the new one "
                        "(%d events buffered)", len(self.buffer))
            if self._task is not None and not self._loop.is_closed():
                self._task.cancel()
        self._loop = loop
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                          request_timeout_ms=10_000,
                                          **{**self._security_kwargs, **self.producer_kwargs})
        self._started = False
        self._inflight = 0
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run())

    def _log_limited(self, kind: str, msg: str, *args: Any) -> None:
        """Log `kind` at most once a minute: a flood of bad events must not become a flood of logs."""
        now = time.monotonic()
        if now - self._logged_at.get(kind, float("-inf")) >= LOG_EVERY_S:
            self._logged_at[kind] = now
            log.warning(msg, *args)

    async def _run(self) -> None:
        producer, wake = self._producer, self._wake
        assert producer is not None and wake is not None
        while True:
            if not self._started:
                try:
                    await producer.start()
                    self._started = True
                except KafkaError as err:
                    self._log_limited("unreachable", "spendwatch emitter cannot reach Kafka (%s); buffering "
                                      "(%d queued, %d dropped)", err, len(self.buffer), self.dropped)
                    await asyncio.sleep(2.0)
                    continue
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel of stop()
                async with asyncio.timeout(self.linger):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self._send_some(producer)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop delivery of everything after it
                log.exception("spendwatch emitter: unexpected error while sending; continuing")
                await asyncio.sleep(1.0)

    def _records(self, items: list[Item]) -> list[tuple[bytes, list[bytes]]]:
        """Group by workflow, then cut into records of at most `max_batch` events and `max_record_bytes`."""
        by_key: dict[bytes, list[bytes]] = {}
        for key, value in items:
            by_key.setdefault(key, []).append(value)
        records: list[tuple[bytes, list[bytes]]] = []
        for key, values in by_key.items():
            chunk: list[bytes] = []
            size = 2
            for value in values:
                if chunk and (len(chunk) >= self.max_batch or size + len(value) + 1 > self.max_record_bytes):
                    records.append((key, chunk))
                    chunk, size = [], 2
                chunk.append(value)
                size += len(value) + 1
            records.append((key, chunk))
        return records

    async def _send_some(self, producer: AIOKafkaProducer) -> None:
        take = min(len(self.buffer), self.max_batch * 20)
        if not take:
            return
        self._inflight = take  # before the pops: emit() must never see their room twice
        items = [self.buffer.popleft() for _ in range(take)]
        records = self._records(items)
        settled: set[int] = set()  # records Kafka confirmed or refused for good
        futures: dict[int, asyncio.Future[Any]] = {}
        unsent: list[Item] = []
        try:
            for i, (key, values) in enumerate(records):
                try:
                    futures[i] = await producer.send(self.topic, b"[" + b",".join(values) + b"]", key=key)
                except KafkaError as err:
                    if isinstance(err, REFUSED_RECORD):
                        self._refused(i, values, err, settled)
                        continue
                    # e.g. no metadata within request_timeout: this record and the rest are retried
                    self._log_limited("send", "spendwatch emitter send failed (%s); will retry", err)
                    break
                except Exception as err:  # one record must never stop the others
                    self._refused(i, values, err, settled)
            for i, fut in futures.items():
                try:
                    await fut
                    self.sent += len(records[i][1])
                    settled.add(i)
                except REFUSED_RECORD as err:
                    self._refused(i, records[i][1], err, settled)
                except KafkaError as err:
                    self._log_limited("send", "spendwatch emitter send failed (%s); will retry", err)
                except Exception as err:
                    self._refused(i, records[i][1], err, settled)
        finally:  # also on cancellation (the loop is going away): what is not confirmed waits for the next send
            unsent = [(key, v) for i, (key, values) in enumerate(records) if i not in settled for v in values]
            self.buffer.extendleft(reversed(unsent))
            self._inflight = 0
        if unsent:
            await asyncio.sleep(1.0)

    def _refused(self, i: int, values: list[bytes], err: Exception, settled: set[int]) -> None:
        settled.add(i)
        self.invalid += len(values)
        self._log_limited("refused", "spendwatch emitter: Kafka refused a record of %d events (%s); dropped",
                          len(values), err)
