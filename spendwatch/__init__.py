"""spendwatch: real-time LLM spend monitor. The client SDK services import lives here."""

from schemas.signing import Keyring
from spendwatch.emitter import UsageEmitter
from spendwatch.guard import KillSwitch, SpendKilled
from spendwatch.usage import digest, usage_event, usage_from_anthropic, usage_from_openai

__all__ = ["Keyring", "KillSwitch", "SpendKilled", "UsageEmitter", "digest", "usage_event", "usage_from_anthropic",
           "usage_from_openai"]
