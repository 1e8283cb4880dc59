"""The engine's event types: msgspec Structs derived from the pydantic wire models.

The pydantic models in `schemas.events` are the contract (JSON Schema, readable
errors). Decoding a batch into them costs ~6 µs per event; msgspec decodes
the same JSON into these Structs in ~1.5 µs, which is a quarter of a worker's
whole per-event budget. The Structs are *derived* from the models, field by
field with every constraint, so the two cannot drift; a constraint or
validator this module does not know fails at import, not silently.

>>> import msgspec
>>> ev = msgspec.json.decode(b'{"type":"usage","event_id":"e1","ts":1.8e9,"workflow":"w",'
...                          b'"model":"gpt-4o","input_tokens":10,"output_tokens":2}', type=Event)
>>> ev.type, ev.workflow, ev.cache_read_tokens, ev.team
('usage', 'w', 0, None)
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Union

import annotated_types as at
import msgspec
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from schemas import limits
from schemas.events import OutcomeEvent, UsageEvent, check_token_parts

_TS = Annotated[float, msgspec.Meta(ge=limits.TS_MIN, le=limits.TS_MAX)]
"""`ts` as the fast path takes it: epoch seconds. RFC 3339 strings fall back to pydantic (`parse_ts`)."""

_KNOWN_VALIDATORS = {"_token_parts", "_json_number"}  # msgspec itself never reads a bool as a number
_BOUNDS = {at.Ge: "ge", at.Le: "le", at.MinLen: "min_length", at.MaxLen: "max_length"}


def _meta(constraints: list[Any]) -> msgspec.Meta | None:
    """msgspec's form of pydantic/annotated-types constraints; unknown ones are an error."""
    kw: dict[str, Any] = {}
    for c in constraints:
        if isinstance(c, FieldInfo):
            meta = _meta(c.metadata)
            kw.update({k: getattr(meta, k) for k in ("ge", "le", "min_length", "max_length")
                       if meta and getattr(meta, k) is not None})
        elif isinstance(c, StringConstraints):
            if c.pattern or c.strip_whitespace or c.to_lower or c.to_upper or c.strict or c.ascii_only:
                raise TypeError(f"schemas.structs cannot mirror {c!r}")
            kw.update({k: v for k, v in (("min_length", c.min_length), ("max_length", c.max_length)) if v is not None})
        elif type(c) in _BOUNDS:
            kw[_BOUNDS[type(c)]] = getattr(c, _BOUNDS[type(c)])
        elif type(c).__name__ == "AllowInfNan" and not c.allow_inf_nan:
            pass  # JSON has no inf/nan, and every float field here is bounded
        else:
            raise TypeError(f"schemas.structs cannot mirror constraint {c!r}")
    return msgspec.Meta(**kw) if kw else None


def _mirror(tp: Any, constraints: Sequence[Any] = ()) -> Any:
    """The msgspec annotation equivalent to a pydantic annotation plus its constraints."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extra = typing.get_args(tp)
        return _mirror(base, [*extra, *constraints])
    if origin in (Union, types.UnionType):
        # a Union built at run time from the mirrored members: mypy only accepts static type expressions here
        inner = Union[tuple(_mirror(a) for a in typing.get_args(tp))]  # type: ignore[valid-type]  # noqa: UP007
        if constraints:
            raise TypeError(f"schemas.structs cannot mirror constraints on a union {tp!r}")
        return inner
    if origin is dict:
        k, v = typing.get_args(tp)
        # a dict type built at run time from the mirrored key and value: not a static type expression for mypy
        tp = dict[_mirror(k), _mirror(v)]  # type: ignore[misc]
    elif tp not in (str, int, float, type(None)):
        raise TypeError(f"schemas.structs cannot mirror type {tp!r}")
    meta = _meta(list(constraints))
    return Annotated[tp, meta] if meta else tp


def _struct(model: type[BaseModel]) -> type[msgspec.Struct]:
    validators = model.__pydantic_decorators__
    unknown = {*validators.field_validators, *validators.model_validators} - _KNOWN_VALIDATORS
    if unknown:
        raise TypeError(f"schemas.structs does not mirror validators {sorted(unknown)} of {model.__name__}")
    tag = typing.get_args(model.model_fields["type"].annotation)[0]
    fields: list[tuple[Any, ...]] = []
    for name, info in model.model_fields.items():
        if name == "type":
            continue
        tp = _TS if name == "ts" else _mirror(info.annotation, info.metadata)
        if info.default_factory is not None:
            # pydantic types the factory as maybe taking the validated data, msgspec wants a no-argument
            # one; none of the wire models' factories takes data
            fields.append((name, tp, msgspec.field(default_factory=info.default_factory)))  # type: ignore[arg-type]
        elif info.default is not PydanticUndefined:
            fields.append((name, tp, info.default))
        else:
            fields.append((name, tp))
    fields.sort(key=len)  # required fields first, as msgspec wants; stable otherwise
    namespace: dict[str, Any] = {"type": tag, "__doc__": f"{model.__name__}, as the engine sees it."}
    if "_token_parts" in validators.model_validators:
        namespace["__post_init__"] = check_token_parts
    return msgspec.defstruct(tag.capitalize(), fields, namespace=namespace, tag_field="type", tag=tag,
                             forbid_unknown_fields=True, omit_defaults=True, frozen=True, gc=False,
                             module=__name__)


if typing.TYPE_CHECKING:  # the Structs have the models' fields, types and defaults, field by field
    Usage = UsageEvent
    Outcome = OutcomeEvent
    Event = UsageEvent | OutcomeEvent
else:
    Usage = _struct(UsageEvent)
    Outcome = _struct(OutcomeEvent)
    Event = Usage | Outcome
BY_TYPE: dict[str, Any] = {"usage": Usage, "outcome": Outcome}


def from_model(model: UsageEvent | OutcomeEvent) -> Any:
    """The Struct of an already validated pydantic event (the slow path's result)."""
    return msgspec.convert(model.model_dump(), BY_TYPE[model.type])


def to_wire(event: Any) -> dict[str, Any]:
    """An event as a wire-contract JSON object (defaults left out)."""
    return msgspec.to_builtins(event)

