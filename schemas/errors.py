"""One way to say why pydantic refused an input: `field.path: message; ...`.

The worker's dead letters, the config loader and the labels reader all report
refusals to people who fix the input by hand, so they say them alike.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from pydantic import ValidationError


def explain(err: ValidationError, root: str = "value", tags: Collection[str] = (),
            messages: Mapping[str, str] | None = None) -> str:
    """Every error of `err` as `field.path: message`, joined by "; ".

    `root` names a refusal of the whole input (an empty location); `tags` are a tagged union's tags,
    which pydantic puts first in the location though no field is called so; `messages` replace
    pydantic's message by error type, where the input's author needs a hint pydantic cannot give."""
    messages = messages or {}
    parts = []
    for e in err.errors(include_url=False):
        loc = e["loc"][1:] if e["loc"][:1] and e["loc"][0] in tags else e["loc"]
        parts.append(f"{'.'.join(str(p) for p in loc) or root}: {messages.get(e['type'], e['msg'])}")
    return "; ".join(parts)
