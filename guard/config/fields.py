"""The values a configuration file may hold, checked one key at a time.

Each validator here turns a raw TOML value into what the models keep, or raises a
:func:`problem` whose text becomes the one-line error (see ``wording``). Paths are taken
relative to the file's directory and ``~`` from the load's environment, both carried in
the :class:`LoadContext` that loading hands to pydantic.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from guard.config.paths import expand_home


@dataclass(frozen=True)
class LoadContext:
    """What validators need beyond the TOML data: the file's directory and the environment."""

    base_dir: Path
    env: Mapping[str, str]


def load_context(info: ValidationInfo) -> LoadContext:
    if isinstance(info.context, LoadContext):
        return info.context
    # Models built directly in code (tests, other modules) use the process environment.
    return LoadContext(Path.cwd(), os.environ)


def problem(message: str, *, key: str | None = None) -> PydanticCustomError:
    """A validation error whose text we wrote; ``key`` names the field inside the section."""
    context: dict[str, Any] = {"text": message}
    if key is not None:
        context["key"] = key
    return PydanticCustomError("guard_config", "{text}", context)


def one_of(*values: str) -> BeforeValidator:
    listed = ", ".join(f'"{value}"' for value in values)

    def check(value: Any) -> Any:
        if not isinstance(value, str) or value not in values:
            raise problem(f"must be one of {listed}")
        return value

    return BeforeValidator(check)


def has_control_chars(text: str) -> bool:
    return any(ord(char) < 32 or 0x7F <= ord(char) < 0xA0 for char in text)


def non_empty(value: Any) -> Any:
    if isinstance(value, str) and (not value.strip() or has_control_chars(value)):
        raise problem("must be a non-empty string without control characters")
    return value


def config_path(value: Any, info: ValidationInfo) -> Any:
    """A path from the file: ``~`` expanded, relative paths taken from the file's directory."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise problem("must be a path (a string)")
    if not value.strip() or "\0" in value:
        raise problem("must be a non-empty path")
    context = load_context(info)
    path = Path(expand_home(value, context.env))
    return path if path.is_absolute() else context.base_dir / path


def as_tuple(value: Any) -> Any:
    # TOML arrays arrive as lists; tuples keep the frozen models hashable.
    return tuple(value) if isinstance(value, list) else value


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not value or any(char.isspace() for char in value) or has_control_chars(value):
        raise problem("must be a host name without spaces")
    if "://" in value:
        raise problem("must be a host name, not a URL")
    if value.count(":") == 1:
        raise problem("must be a host name only; put the port number in port")
    return value


_ADDRESS = re.compile(r"[^@\s,;<>()\[\]\\\"]+@[^@\s,;<>()\[\]\\\"]+")


def email_address(value: Any) -> Any:
    """A single address, optionally with a display name: ``Me <me@example.org>``."""
    if not isinstance(value, str):
        return value
    if has_control_chars(value):
        raise problem("must be an email address without control characters")
    text = value.strip()
    match = re.fullmatch(r"(?:[^<>]*?\s*)?<([^<>]*)>", text)
    address = match.group(1) if match else text
    if not _ADDRESS.fullmatch(address):
        raise problem('must be one email address, like "me@example.org"')
    return text


def time_of_day(value: Any) -> Any:
    if isinstance(value, dt.time):  # a TOML local time, 08:00:00
        if value.tzinfo is not None:
            raise problem('must be a local time of day as "HH:MM"; set digest.timezone')
        return value.replace(second=0, microsecond=0)
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise problem('must be a time of day as "HH:MM" (24-hour clock), like "08:00"')
    return dt.time(int(match.group(1)), int(match.group(2)))


def zone_name(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise problem(
            f'unknown time zone "{value}" (use an IANA name like "Europe/Berlin")'
        ) from None
    return value


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
MIN_POLL_INTERVAL = 2  # for tests and own servers; providers expect minutes


def duration_seconds(value: Any) -> Any:
    """Seconds from an integer or a duration string such as ``"90s"``, ``"5m"``, ``"1h30m"``."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        match = _DURATION.fullmatch(text)
        if text.isdigit():
            seconds = int(text)
        elif text and match:
            hours, minutes, secs = (int(group or 0) for group in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
    if seconds is None:
        raise problem('must be a number of seconds or a duration like "30s", "5m", "1h"')
    if seconds < MIN_POLL_INTERVAL:
        raise problem(f"must be at least {MIN_POLL_INTERVAL} seconds (got {seconds})")
    return seconds


TlsMode = Literal["implicit", "starttls", "none"]
Tls = Annotated[TlsMode, one_of("implicit", "starttls", "none")]
Text = Annotated[str, BeforeValidator(non_empty)]
Host = Annotated[str, BeforeValidator(host_name)]
ConfigPath = Annotated[Path, BeforeValidator(config_path)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
