"""Wire models of spendwatch: what goes over Kafka, in any language."""

from schemas.alerts import Alert
from schemas.control import ControlCommand
from schemas.decode import RecordError, parse_record, validate_event
from schemas.events import Event, OutcomeEvent, UsageEvent

__all__ = [
    "Alert",
    "ControlCommand",
    "Event",
    "OutcomeEvent",
    "RecordError",
    "UsageEvent",
    "parse_record",
    "validate_event",
]
