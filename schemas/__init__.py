"""Wire models of spendwatch: what goes over Kafka, in any language."""

from schemas.alerts import Alert
from schemas.control import ControlCommand
from schemas.events import (
    Event,
    OutcomeEvent,
    RecordError,
    UsageEvent,
    parse_record,
)

__all__ = [
    "Alert",
    "ControlCommand",
    "Event",
    "OutcomeEvent",
    "RecordError",
    "UsageEvent",
    "parse_record",
]
