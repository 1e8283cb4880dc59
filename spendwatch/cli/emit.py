"""`spendwatch emit`: validate JSONL events and publish them, keyed by workflow."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO

from schemas.decode import parse_record
from schemas.structs import to_wire
from spendwatch.cli.common import CliError
from spendwatch.emitter import UsageEmitter

FLUSH_TIMEOUT_S = 120.0


@dataclass
class Emitted:
    """What `emit_lines` did: `sent` is what Kafka confirmed, `failed` what it did not take."""

    sent: int = 0
    bad_lines: int = 0
    failed: int = 0


async def emit_lines(fh: BinaryIO, broker: str, topic: str, skip_bad: bool = False,
                     **emitter_kwargs: Any) -> Emitted:
    """Publish every valid event, waiting for the producer when its buffer is full (a file is
    never worth a dropped event); a bad line stops with its line number unless `skip_bad`."""
    emitter = UsageEmitter(broker, topic, **emitter_kwargs)  # security: SPENDWATCH_KAFKA_* unless given
    await emitter.start()
    out = Emitted()
    try:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            events, errors = parse_record(line.strip())
            if errors:
                if not skip_bad:
                    raise CliError(f"line {no}: {errors[0].reason} (use --skip-bad to skip and count bad lines)")
                out.bad_lines += 1
                continue
            for ev in events:
                await emitter.put(to_wire(ev))
        await emitter.flush(timeout=FLUSH_TIMEOUT_S)
    finally:
        out.failed = emitter.pending + emitter.invalid + emitter.dropped
        out.sent = emitter.sent
        await emitter.stop()
    return out


def cmd_emit(args: argparse.Namespace) -> int:
    stream = sys.stdin.buffer if str(args.file) == "-" else None
    if stream is None and not args.file.exists():
        raise CliError(f"{args.file}: no such file")
    with (stream or open(args.file, "rb")) as fh:
        done = asyncio.run(emit_lines(fh, args.broker, args.topic, skip_bad=args.skip_bad))
    print(f"published {done.sent} events to {args.topic}"
          + (f", skipped {done.bad_lines} bad lines" if done.bad_lines else ""))
    if done.failed:
        print(f"spendwatch: error: {done.failed} events were not published (Kafka did not confirm them "
              f"within {FLUSH_TIMEOUT_S:.0f} s, or refused them: see the log above). Publishing the file "
              "again within the worker's dedup_window_s (default 1 h) counts each event once: "
              "repeats are dropped by event id", file=sys.stderr)
        return 1
    return 0
