"""The tier map: which cheaper model a routine call on a frontier model could go to.

Keys are model names or patterns with one `*` (any text); a `*` in the value
takes the text the key's `*` matched, so `gemini-*-pro` → `gemini-*-flash`
maps `gemini-2.5-pro` to `gemini-2.5-flash`. Entries are tried in order, the
first match wins; a LiteLLM-style prefix (`anthropic/`, `google/`) is kept
on the target. An empty value maps a model to nothing (turns a default off).

>>> tiers = TierMap(DEFAULT_TIERS)
>>> [tiers.target(m) for m in ("gpt-4o", "gemini-2.5-pro", "anthropic/claude-sonnet-4-5", "gpt-4o-mini")]
['gpt-4o-mini', 'gemini-2.5-flash', 'anthropic/claude-haiku-4-5', None]
>>> TierMap([("gpt-4o", ""), *DEFAULT_TIERS.items()]).target("gpt-4o") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

DEFAULT_TIERS: dict[str, str] = {
    "gpt-4o": "gpt-4o-mini",
    "gpt-4o-20*": "gpt-4o-mini",
    "chatgpt-4o-latest": "gpt-4o-mini",
    "gpt-4.1": "gpt-4.1-mini",
    "gpt-4.1-20*": "gpt-4.1-mini",
    "gpt-5": "gpt-5-mini",
    "gpt-5-20*": "gpt-5-mini",
    "gpt-5.1": "gpt-5-mini",
    "o3": "o4-mini",
    "claude-opus-4-5*": "claude-sonnet-4-5",
    "claude-opus-4*": "claude-sonnet-4-0",
    "claude-sonnet-4-5*": "claude-haiku-4-5",
    "claude-sonnet-4*": "claude-haiku-4-5",
    "claude-3-7-sonnet*": "claude-3-5-haiku-latest",
    "claude-3-5-sonnet*": "claude-3-5-haiku-latest",
    "gemini-*-pro": "gemini-*-flash",
    "gemini-*-pro-preview": "gemini-*-flash-preview",
    "gemini-*-pro-latest": "gemini-*-flash-latest",
}
"""Per provider, a frontier model → the cheaper model of its family (every target is in the
genai-prices catalog; tests/test_insights.py checks). Applied only to calls whose shape looks routine."""
MAX_TIERS = 500


class TierMap:
    """Ordered (pattern, target) rules; `target(model)` resolves once per model name and caches."""

    def __init__(self, rules: Mapping[str, str] | Iterable[tuple[str, str]]):
        items = list(rules.items() if isinstance(rules, Mapping) else rules)
        if len(items) > MAX_TIERS:
            raise ValueError(f"at most {MAX_TIERS} tier rules")
        self.rules = items
        self._compiled = [(re.compile("^" + re.escape(k).replace(r"\*", "(.*?)", 1).replace(r"\*", ".*") + "$"), v)
                          for k, v in items]
        self._cache: dict[str, str | None] = {}

    def target(self, model: str) -> str | None:
        if model in self._cache:
            return self._cache[model]
        prefix, _, bare = model.rpartition("/")
        found: str | None = None
        for rx, value in self._compiled:
            m = rx.match(bare)
            if m is not None:
                if value:
                    found = value.replace("*", m.group(1), 1) if m.groups() and "*" in value else value
                    found = f"{prefix}/{found}" if prefix else found
                break
        if len(self._cache) < 10_000:
            self._cache[model] = found
        return found
