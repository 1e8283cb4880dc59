"""spendwatch: real-time LLM spend monitor. The client SDK services import lives here."""

from schemas.signing import Keyring
from spendwatch.emitter import UsageEmitter
from spendwatch.guard import KillSwitch, SpendKilled, arg
from spendwatch.instrument import attribute, instrument
from spendwatch.usage import (
    AnthropicStreamUsage,
    OpenAIStreamUsage,
    digest,
    tool_calls,
    tool_fingerprint,
    usage_event,
    usage_from_anthropic,
    usage_from_error,
    usage_from_openai,
)

__all__ = ["AnthropicStreamUsage", "Keyring", "KillSwitch", "OpenAIStreamUsage", "SpendKilled", "UsageEmitter", "arg",
           "attribute", "digest", "instrument", "tool_calls", "tool_fingerprint", "usage_event", "usage_from_anthropic",
           "usage_from_error", "usage_from_openai"]
