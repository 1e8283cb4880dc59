"""Secrets (Slack tokens, webhook URLs, PagerDuty keys, control keys, the Kafka password) never leak.

Held as `pydantic.SecretStr` (masked in repr and str); and, as a second line of defence, every
secret the process loads is registered here, so that `redact` (used by `DeliveryError`, whose
message can end up in logs and in the notifier's ledger) and the log record factory installed by
`redact_logs` replace it with `***` wherever a library puts it into a message: an aiohttp error
carrying a webhook URL, slack-sdk's debug line with the incoming-webhook URL, a traceback.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import SecretStr

MASK = "***"
MIN_LEN = 6
"""Shorter values are not registered: masking them would mangle ordinary text."""

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def secret(value: str | SecretStr | None) -> SecretStr | None:
    """`value` as a registered SecretStr (None stays None)."""
    if value is None:
        return None
    s = value if isinstance(value, SecretStr) else SecretStr(value)
    register(s.get_secret_value())
    return s


def register(*values: str | None) -> None:
    """Mask these strings in every later `redact` and log record."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= MIN_LEN)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`, longest first (a URL before its token)."""
    if not _secrets:
        return text
    for value in sorted(_secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_logs() -> None:
    """Mask registered secrets in every log record from now on (idempotent). The record is formatted
    once, when it is made (only records a logger lets through are made), so the handlers see the
    masked message; a traceback is formatted and masked too."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
