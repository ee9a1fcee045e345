"""How configuration problems are worded: :class:`ConfigError` and one line per problem.

pydantic's validation errors become ``dotted.key: message`` (``imap.port: must be an
integer``) in our own words, never repeating the offending value (it may be a secret);
an unknown key gets a "did you mean" from the keys the section does accept. Tests check
this wording: change it only on purpose.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel

from guard.errors import GuardError, Kind


class ConfigError(GuardError):
    """A configuration problem, as one line fit for a terminal or the journal.

    ``problems`` holds each problem separately (``imap.port: must be an integer``);
    ``str(error)`` is the whole line, prefixed with the file when there is one.
    Messages never contain a secret value.
    """

    kind = Kind.CONFIG

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


def or_list(items: typing.Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def and_list(items: typing.Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "time_type": 'must be a time of day as "HH:MM"',
}


def describe(error: Any, root: type[BaseModel]) -> str:
    """One problem of validating ``root`` as ``dotted.key: message``; the offending value
    is never repeated."""
    loc = tuple(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "guard_config":
        if "key" in context:
            loc = (*loc, context["key"])
        return _located(loc, str(context["text"]))
    if kind == "extra_forbidden":
        return _unknown_key(root, loc, is_table=isinstance(error.get("input"), dict))
    if kind == "missing":
        if len(loc) == 1 and _model_at(root, loc) is not None:
            return f"missing section [{loc[0]}]"
        return _located(loc, "is required")
    if kind in _TYPE_MESSAGES:
        return _located(loc, _TYPE_MESSAGES[kind])
    bounds = {
        "greater_than_equal": "must be at least {ge}",
        "greater_than": "must be greater than {gt}",
        "less_than_equal": "must be at most {le}",
        "less_than": "must be less than {lt}",
    }
    if kind in bounds:
        return _located(loc, bounds[kind].format(**context))
    message = str(error.get("msg", "is invalid"))  # pydantic's own texts do not quote input
    return _located(loc, message[:1].lower() + message[1:])


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _located(loc: tuple[Any, ...], message: str) -> str:
    return f"{_dotted(loc)}: {message}" if loc else message


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as ``SmtpSettings | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, Annotated, list, tuple):
        for argument in typing.get_args(annotation):
            found = _model_type(argument)
            if found is not None:
                return found
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that ``loc`` points at, walking down from ``root`` (the Config)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        field = _field_by_key(model, str(part))
        model = None if field is None else _model_type(field.annotation)
    return model


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias, field.validation_alias):
            return field
    return None


def _unknown_key(root: type[BaseModel], loc: tuple[Any, ...], *, is_table: bool) -> str:
    parent, key = loc[:-1], str(loc[-1])
    model = _model_at(root, parent)
    fields = model.model_fields.items() if model else ()
    known = [str(field.validation_alias or name) for name, field in fields]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not parent and is_table:
        hint = f" (did you mean [{close[0]}]?)" if close else ""
        return f"unknown section [{key}]{hint}"
    hint = f' (did you mean "{_dotted((*parent, close[0]))}"?)' if close else ""
    return f'unknown key "{_dotted(loc)}"{hint}'
