"""A plain synchronous service (no asyncio, no web framework) that reports its LLM spend to spendwatch
and obeys its kill switch.

Every OpenAI call emits one usage event, attributed to the ticket being answered (the run), without a
line of spendwatch at the call site; a ticket whose run was killed (`spendwatch kill --run T-2 ...`)
is refused before it spends. The emitter and the guard each run on a background thread of their own.

    SPENDWATCH_BROKER=kafka://127.0.0.1:9092 SPENDWATCH_CONTROL_KEYS=k1:secret \\
    OPENAI_API_KEY=sk-... python examples/sync_service.py T-1 T-2 T-3
"""

from __future__ import annotations

import os
import sys

import openai

import spendwatch
from spendwatch import Keyring, KillSwitch, SpendKilled, UsageEmitter, arg

BROKER = os.environ.get("SPENDWATCH_BROKER", "kafka://127.0.0.1:9092")

emitter = UsageEmitter(BROKER).start_thread()  # sends from a background thread; flushed at exit
switch = KillSwitch(BROKER, keyring=Keyring.load())  # keys from SPENDWATCH_CONTROL_KEYS
switch.start_thread()  # follows spendwatch.control from a thread; check() answers from memory
client = spendwatch.instrument(openai.OpenAI(), workflow="support-bot", team="cx", service="helpdesk",
                               emitter=emitter)


@switch.protect(workflow="support-bot", run_id=arg("ticket_id"))  # the run to check comes from each call
def answer(ticket_id: str, question: str) -> str:
    with spendwatch.attribute(run_id=ticket_id):  # the calls below count for this ticket
        resp = client.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": question}])
    return resp.choices[0].message.content or ""


def main(tickets: list[str]) -> int:
    for ticket in tickets:
        try:
            print(f"{ticket}: {answer(ticket, f'Summarise ticket {ticket} for the customer.')}")
        except SpendKilled as err:
            print(f"{ticket}: not answered, {err}")
    emitter.close()  # flush: every event is in Kafka when this returns
    switch.close()
    print(f"usage events sent: {emitter.sent}, dropped: {emitter.dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["T-1"]))
