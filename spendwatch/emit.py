"""`spendwatch emit`: validate JSONL events and publish them, keyed by workflow."""

from __future__ import annotations

from typing import BinaryIO


from schemas.decode import parse_record
from schemas.structs import to_wire
from spendwatch.emitter import UsageEmitter


async def emit_lines(fh: BinaryIO, broker: str, topic: str, skip_bad: bool = False) -> tuple[int, int]:
    """Publish every valid event; a bad line stops with its line number unless `skip_bad`."""
    emitter = UsageEmitter(broker, topic)
    await emitter.start()
    sent = bad = 0
    try:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            events, errors = parse_record(line.strip())
            if errors:
                if not skip_bad:
                    from spendwatch.cli import CliError

                    raise CliError(f"line {no}: {errors[0].reason} (use --skip-bad to skip and count bad lines)")
                bad += 1
                continue
            for ev in events:
                emitter.emit(to_wire(ev))
                sent += 1
        await emitter.flush()
    finally:
        await emitter.stop()
    return sent, bad
