"""Wire models of spendwatch: what goes over Kafka, in any language."""

from schemas.alerts import Alert
from schemas.control import ControlCommand
from schemas.decode import RecordError, parse_record, validate_event
from schemas.events import OutcomeEvent, UsageEvent, WireEvent

__all__ = [
    "Alert",
    "ControlCommand",
    "OutcomeEvent",
    "RecordError",
    "UsageEvent",
    "WireEvent",
    "parse_record",
    "validate_event",
]
