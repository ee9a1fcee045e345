"""Settings: where the configuration file is, what it may say, and how secrets are fetched.

The file is TOML, read with :mod:`tomllib` and validated by frozen pydantic models that
refuse unknown keys. Every problem becomes a :class:`ConfigError` whose text is one line
naming the file and the dotted key (``config.toml: imap.port: must be an integer``).
Relative paths in the file are taken relative to the file's directory, and defaults that
depend on the environment (the SQLite location) are decided at load time from the ``env``
mapping handed in, so tests never need to touch the real environment. Secrets are never
stored in the file or in the models: the file says where a secret comes from (a command, a
file, or a systemd credential) and the ``password()`` / ``oauth2_token()`` methods fetch it
on demand as a :class:`Secret`, which never prints its value. Nothing here talks to a server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hmac
import ipaddress
import logging
import os
import re
import signal
import stat
import subprocess
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from guard.errors import GuardError, Kind

__all__ = [
    "CONFIG_ENV_VAR",
    "MIN_POLL_INTERVAL",
    "SECRET_COMMAND_TIMEOUT",
    "SYSTEM_CONFIG_PATH",
    "Config",
    "ConfigError",
    "DigestSettings",
    "ImapSettings",
    "LabelMode",
    "LabelSettings",
    "PolicySettings",
    "RiskLevel",
    "ScheduleSettings",
    "Secret",
    "SmtpSettings",
    "StoreSettings",
    "TlsMode",
    "config_candidates",
    "default_state_dir",
    "find_config_path",
    "load_config",
    "resolve_secret",
]

CONFIG_ENV_VAR = "INBOX_GUARD_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/inbox-guard/config.toml")
SQLITE_FILE_NAME = "inbox-guard.sqlite3"
SECRET_COMMAND_TIMEOUT = 60.0
"""Seconds a password or token command may run before it is killed."""

_SECRET_READ_LIMIT = 64 * 1024  # a secret is one line; never slurp a huge file or /dev/zero


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


class Secret:
    """A password or token that does not show itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself; call it at the last moment, where the server needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> Any:
        # Pickles end up on disk (job stores, caches): refuse rather than leak.
        raise TypeError("a Secret cannot be pickled")


# --- validation helpers -----------------------------------------------------------------


@dataclass(frozen=True)
class _LoadContext:
    """What validators need beyond the TOML data: the file's directory and the environment."""

    base_dir: Path
    env: Mapping[str, str]


def _context(info: ValidationInfo) -> _LoadContext:
    if isinstance(info.context, _LoadContext):
        return info.context
    # Models built directly in code (tests, other modules) use the process environment.
    return _LoadContext(Path.cwd(), os.environ)


def _problem(message: str, *, key: str | None = None) -> PydanticCustomError:
    """A validation error whose text we wrote; ``key`` names the field inside the section."""
    context: dict[str, Any] = {"text": message}
    if key is not None:
        context["key"] = key
    return PydanticCustomError("guard_config", "{text}", context)


def _one_of(*values: str) -> BeforeValidator:
    listed = ", ".join(f'"{value}"' for value in values)

    def check(value: Any) -> Any:
        if not isinstance(value, str) or value not in values:
            raise _problem(f"must be one of {listed}")
        return value

    return BeforeValidator(check)


def _has_control_chars(text: str) -> bool:
    return any(ord(char) < 32 or 0x7F <= ord(char) < 0xA0 for char in text)


def _non_empty(value: Any) -> Any:
    if isinstance(value, str) and (not value.strip() or _has_control_chars(value)):
        raise _problem("must be a non-empty string without control characters")
    return value


def _expand_home(text: str, env: Mapping[str, str]) -> str:
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME")
        if not home:
            try:  # a systemd DynamicUser has no HOME and may have no passwd entry either
                home = str(Path.home())
            except (KeyError, RuntimeError):
                home = "/nonexistent"
        return home + text[1:]
    return text


def _config_path(value: Any, info: ValidationInfo) -> Any:
    """A path from the file: ``~`` expanded, relative paths taken from the file's directory."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise _problem("must be a path (a string)")
    if not value.strip() or "\0" in value:
        raise _problem("must be a non-empty path")
    context = _context(info)
    path = Path(_expand_home(value, context.env))
    return path if path.is_absolute() else context.base_dir / path


def _as_tuple(value: Any) -> Any:
    # TOML arrays arrive as lists; tuples keep the frozen models hashable.
    return tuple(value) if isinstance(value, list) else value


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not value or any(char.isspace() for char in value) or _has_control_chars(value):
        raise _problem("must be a host name without spaces")
    if "://" in value:
        raise _problem("must be a host name, not a URL")
    if value.count(":") == 1:
        raise _problem("must be a host name only; put the port number in port")
    return value


_ADDRESS = re.compile(r"[^@\s,;<>()\[\]\\\"]+@[^@\s,;<>()\[\]\\\"]+")


def _email_address(value: Any) -> Any:
    """A single address, optionally with a display name: ``Me <me@example.org>``."""
    if not isinstance(value, str):
        return value
    if _has_control_chars(value):
        raise _problem("must be an email address without control characters")
    text = value.strip()
    match = re.fullmatch(r"(?:[^<>]*?\s*)?<([^<>]*)>", text)
    address = match.group(1) if match else text
    if not _ADDRESS.fullmatch(address):
        raise _problem('must be one email address, like "me@example.org"')
    return text


def _time_of_day(value: Any) -> Any:
    if isinstance(value, dt.time):  # a TOML local time, 08:00:00
        if value.tzinfo is not None:
            raise _problem('must be a local time of day as "HH:MM"; set digest.timezone')
        return value.replace(second=0, microsecond=0)
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise _problem('must be a time of day as "HH:MM" (24-hour clock), like "08:00"')
    return dt.time(int(match.group(1)), int(match.group(2)))


def _zone_name(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _problem(
            f'unknown time zone "{value}" (use an IANA name like "Europe/Berlin")'
        ) from None
    return value


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
MIN_POLL_INTERVAL = 2  # for tests and own servers; providers expect minutes


def _duration_seconds(value: Any) -> Any:
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
        raise _problem('must be a number of seconds or a duration like "30s", "5m", "1h"')
    if seconds < MIN_POLL_INTERVAL:
        raise _problem(f"must be at least {MIN_POLL_INTERVAL} seconds (got {seconds})")
    return seconds


# --- the sections -------------------------------------------------------------------------

TlsMode = Literal["implicit", "starttls", "none"]
_Tls = Annotated[TlsMode, _one_of("implicit", "starttls", "none")]
_Text = Annotated[str, BeforeValidator(_non_empty)]
_Host = Annotated[str, BeforeValidator(_host_name)]
_ConfigPath = Annotated[Path, BeforeValidator(_config_path)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_Seconds = Annotated[float, Field(gt=0, le=3600)]


class _Section(BaseModel):
    """Base of every section: unknown keys refused, values immutable, types not coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ServerSettings(_Section):
    """What IMAP and SMTP have in common: an address, TLS, a login and where its secret is."""

    SECTION: ClassVar[str]
    DEFAULT_PORTS: ClassVar[Mapping[str, int]]
    PASSWORD_CREDENTIAL: ClassVar[str]
    OAUTH2_CREDENTIAL: ClassVar[str]
    SECRET_KEYS: ClassVar[tuple[str, ...]] = (
        "password_file",
        "password_command",
        "oauth2_token_command",
    )

    host: _Host
    port: _Port = 0  # never used: filled in from the TLS mode by _default_port
    tls: _Tls
    username: _Text | None = None
    password_file: _ConfigPath | None = None
    password_command: _Text | None = None
    oauth2_token_command: _Text | None = None
    ca_file: _ConfigPath | None = None
    timeout: _Seconds = 30.0

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        # The usual port follows from the TLS mode, so it is filled in before validation
        # (from the default mode when the given one is invalid: that error is reported alone).
        if isinstance(data, dict) and "port" not in data:
            default_tls = cls.model_fields["tls"].default
            tls = data.get("tls", default_tls)
            port = cls.DEFAULT_PORTS.get(tls) if isinstance(tls, str) else None
            data = {**data, "port": port or cls.DEFAULT_PORTS[default_tls]}
        return data

    @model_validator(mode="after")
    def _check_server(self) -> typing.Self:
        if self.tls == "none" and not _is_loopback(self.host):
            raise _problem(
                f'"none" is only allowed for a loopback host (got {self.host})', key="tls"
            )
        chosen = [key for key in self.SECRET_KEYS if getattr(self, key) is not None]
        if len(chosen) > 1:
            raise _problem(
                f"set only one of {_or_list(self.SECRET_KEYS)} (found {_and_list(chosen)})"
            )
        if chosen and self.username is None:
            raise _problem(f"is required when {chosen[0]} is set", key="username")
        return self

    @property
    def uses_oauth2(self) -> bool:
        """Log in with XOAUTH2 (a token from ``oauth2_token_command``) instead of a password."""
        return self.oauth2_token_command is not None

    def password(self, env: Mapping[str, str] = os.environ) -> Secret:
        """The login password: from ``password_command``, else ``password_file``, else the
        systemd credential ``imap-password`` / ``smtp-password`` in ``$CREDENTIALS_DIRECTORY``."""
        return _resolve(
            f"{self.SECTION}.password",
            file=self.password_file,
            file_key=f"{self.SECTION}.password_file",
            command=self.password_command,
            command_key=f"{self.SECTION}.password_command",
            credential=self.PASSWORD_CREDENTIAL,
            env=env,
            timeout=SECRET_COMMAND_TIMEOUT,
        )

    def oauth2_token(self, env: Mapping[str, str] = os.environ) -> Secret:
        """An OAuth2 access token for XOAUTH2: from ``oauth2_token_command``, else the systemd
        credential ``imap-oauth2-token`` / ``smtp-oauth2-token``. Ask again for every login:
        access tokens expire (about an hour at Google and Microsoft)."""
        return _resolve(
            f"{self.SECTION}.oauth2_token",
            file=None,
            file_key=None,
            command=self.oauth2_token_command,
            command_key=f"{self.SECTION}.oauth2_token_command",
            credential=self.OAUTH2_CREDENTIAL,
            env=env,
            timeout=SECRET_COMMAND_TIMEOUT,
        )


def _or_list(items: typing.Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def _and_list(items: typing.Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


class ImapSettings(_ServerSettings):
    """``[imap]``: the work mailbox to guard."""

    SECTION: ClassVar[str] = "imap"
    DEFAULT_PORTS: ClassVar[Mapping[str, int]] = {"implicit": 993, "starttls": 143, "none": 143}
    PASSWORD_CREDENTIAL: ClassVar[str] = "imap-password"
    OAUTH2_CREDENTIAL: ClassVar[str] = "imap-oauth2-token"

    tls: _Tls = "implicit"
    username: _Text
    folders: Annotated[tuple[_Text, ...] | None, BeforeValidator(_as_tuple)] = None
    """None means INBOX plus the folder with the special-use ``\\Sent`` attribute."""
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 200
    max_message_bytes: Annotated[int, Field(ge=1024)] = 25 * 1024 * 1024
    """Larger messages are fetched only in part (the scanner records them as unchecked)."""
    batch_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    """Message bytes a scan holds in memory at once; a batch is fetched and recorded in
    runs that fit (a single message bigger than this is a run of its own)."""

    @model_validator(mode="after")
    def _check_folders(self) -> typing.Self:
        if self.folders is not None and not self.folders:
            raise _problem(
                "must name at least one folder (leave it out for the default)", key="folders"
            )
        return self


class SmtpSettings(_ServerSettings):
    """``[smtp]``: the server the daily digest is sent through. Without ``username`` the
    digest is sent without logging in (a local relay)."""

    SECTION: ClassVar[str] = "smtp"
    DEFAULT_PORTS: ClassVar[Mapping[str, int]] = {"starttls": 587, "implicit": 465, "none": 25}
    PASSWORD_CREDENTIAL: ClassVar[str] = "smtp-password"
    OAUTH2_CREDENTIAL: ClassVar[str] = "smtp-oauth2-token"

    tls: _Tls = "starttls"


LabelMode = Literal["auto", "gmail", "keywords", "folders"]


class LabelSettings(_Section):
    """``[labels]``: how risky threads are marked on the server."""

    mode: Annotated[LabelMode, _one_of("auto", "gmail", "keywords", "folders")] = "auto"
    prefix: _Text = "Guard"


class StoreSettings(_Section):
    """``[store]``: the database as an SQLAlchemy URL (default: SQLite in the state directory)."""

    url: str

    @model_validator(mode="before")
    @classmethod
    def _default_url(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "url" not in data:
            state_dir = default_state_dir(_context(info).env)
            data = {**data, "url": f"sqlite:///{state_dir / SQLITE_FILE_NAME}"}
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        from sqlalchemy.engine import make_url  # heavy import, only when a config is loaded
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            # Not echoed: the URL may carry a database password.
            raise _problem(
                'must be an SQLAlchemy URL like "sqlite:////var/lib/inbox-guard/db.sqlite3"'
            ) from None
        database = url.database
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return value
        if database.startswith("file:") or Path(database).is_absolute():
            return value
        # A relative SQLite path is taken from the file's directory, like every other path
        # (SQLAlchemy would take it from the working directory, which is / under systemd).
        context = _context(info)
        resolved = context.base_dir / _expand_home(database, context.env)
        return url.set(database=str(resolved)).render_as_string(hide_password=False)

    @property
    def sqlite_path(self) -> Path | None:
        """The database file when the URL is a SQLite file, else None (memory, PostgreSQL…)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        database = url.database
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return None
        if database.startswith("file:"):
            return None
        return Path(database)

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***``."""
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        return self.url if url.password is None else url.render_as_string(hide_password=True)

    def __repr_args__(self) -> Any:
        yield "url", self.redacted_url


RiskLevel = Literal["low", "medium", "high"]


class PolicySettings(_Section):
    """``[policy]``: extra rule files and the lowest risk level that gets labels."""

    rules: Annotated[tuple[_ConfigPath, ...], BeforeValidator(_as_tuple)] = ()
    min_risk: Annotated[RiskLevel, _one_of("low", "medium", "high")] = "medium"


class DigestSettings(_Section):
    """``[digest]``: the daily summary mailed to the freelancer's other address."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    to: Annotated[str, BeforeValidator(_email_address)]
    # "from" is a Python keyword: the attribute is from_addr, the key in the file is "from".
    from_addr: Annotated[str, BeforeValidator(_email_address)] = Field(
        validation_alias="from", serialization_alias="from"
    )
    time: Annotated[dt.time, BeforeValidator(_time_of_day)] = dt.time(8, 0)
    timezone: Annotated[str | None, BeforeValidator(_zone_name)] = None
    """An IANA zone name; None means the system's local zone."""
    send_empty: bool = False

    @field_serializer("time")
    def _time_as_text(self, value: dt.time) -> str:
        return value.strftime("%H:%M")

    def zone(self) -> dt.tzinfo:
        """The zone ``time`` is in: the configured one, else the system's local zone."""
        if self.timezone is not None:
            return ZoneInfo(self.timezone)
        try:
            import tzlocal  # comes with APScheduler; knows the IANA name of the local zone

            return typing.cast(dt.tzinfo, tzlocal.get_localzone())
        except Exception:  # no tzlocal, or an unreadable /etc/localtime
            local = dt.datetime.now().astimezone().tzinfo
            return local if local is not None else dt.UTC


class ScheduleSettings(_Section):
    """``[schedule]``: how often the mailbox is polled."""

    poll_interval: Annotated[int, BeforeValidator(_duration_seconds)] = 300
    """Seconds between polls; the file may say ``300`` or ``"5m"``."""
    idle: bool = False
    idle_renew: Annotated[int, BeforeValidator(_duration_seconds)] = 300
    """Seconds one IDLE lasts before it is renewed; the renewal's round trip is also what
    notices a connection that died silently, so this bounds how long that can go unseen."""
    max_parallel: Annotated[int, Field(ge=1, le=32)] = 2
    """How many mailboxes are scanned at the same time (with several ``[[account]]``)."""


class EvidenceSettings(_Section):
    """``[evidence]``: which original messages are kept in the store, byte for byte."""

    keep: Annotated[str, _one_of("risky", "all", "none")] = "risky"
    """``risky``: every message of a flagged thread (kept for good); ``all``: every message
    read; ``none``: no copies (export then needs the messages still on the server)."""


class DraftSettings(_Section):
    """``[drafts]``: polite decline drafts for off-platform requests (off by default)."""

    enabled: bool = False
    templates: _ConfigPath | None = None
    """A directory with your own wording: ``decline.<lang>.txt`` (en, es, pt, fr, de, ru)."""
    platform: _Text = "the platform"
    """How the drafts name the marketplace, e.g. "Upwork"."""


def _account_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise _problem(
            "must be 1-63 letters, digits, '.', '_' or '-', starting with one of the first two"
        )
    return value


class AccountSettings(_Section):
    """One ``[[account]]``: a mailbox of its own, scanned and reported separately."""

    name: Annotated[str, BeforeValidator(_account_name)]
    imap: ImapSettings
    labels: LabelSettings | None = None
    """Label settings for this mailbox (default: the top-level ``[labels]``)."""
    digest_to: Annotated[str | None, BeforeValidator(_email_address)] = None
    """Where this mailbox's digest goes (default: ``digest.to``)."""


@dataclass(frozen=True)
class Account:
    """A mailbox to guard, with the settings that apply to it."""

    name: str
    imap: ImapSettings
    labels: LabelSettings
    digest_to: str | None


class Config(_Section):
    """The whole configuration. Sections that are absent get their defaults, except the
    optional ``[smtp]`` and ``[digest]``, which stay None (no digest is sent).

    One mailbox is configured with ``[imap]``; several with ``[[account]]`` blocks (each
    with a ``name`` and its own ``[account.imap]``) instead."""

    imap: ImapSettings | None = None
    account: Annotated[tuple[AccountSettings, ...], BeforeValidator(_as_tuple)] = ()
    labels: LabelSettings = Field(default_factory=LabelSettings)
    store: StoreSettings = Field(default_factory=lambda: StoreSettings.model_validate({}))
    policy: PolicySettings = Field(default_factory=PolicySettings)
    smtp: SmtpSettings | None = None
    digest: DigestSettings | None = None
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
    drafts: DraftSettings = Field(default_factory=DraftSettings)

    _source: Path | None = PrivateAttr(default=None)

    # Sections with defaults that depend on the load context (env, file directory) must be
    # validated with that context, so an absent one is validated from an empty table.
    _CONTEXT_SECTIONS: ClassVar[tuple[str, ...]] = ("store",)

    @model_validator(mode="before")
    @classmethod
    def _fill_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**{name: {} for name in cls._CONTEXT_SECTIONS}, **data}
        return data

    @model_validator(mode="after")
    def _check_accounts(self) -> typing.Self:
        if self.imap is None and not self.account:
            raise _problem("missing section [imap] (or [[account]] blocks)")
        if self.imap is not None and self.account:
            raise _problem(
                "use either [imap] for one mailbox or [[account]] blocks, not both", key="imap"
            )
        names = [a.name for a in self.account]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _problem(
                f"account names must be unique (repeated: {', '.join(dupes)})", key="account"
            )
        return self

    @property
    def accounts(self) -> tuple[Account, ...]:
        """Every mailbox to guard; a single ``[imap]`` is the account named "default"."""
        if self.imap is not None:
            return (Account("default", self.imap, self.labels, None),)
        return tuple(
            Account(a.name, a.imap, a.labels or self.labels, a.digest_to) for a in self.account
        )

    def account_named(self, name: str) -> Account:
        for acct in self.accounts:
            if acct.name == name:
                return acct
        known = ", ".join(a.name for a in self.accounts)
        raise ConfigError(f"no account named {name!r} (configured: {known})")

    @model_validator(mode="after")
    def _check_digest(self) -> typing.Self:
        if self.digest is not None and self.smtp is None:
            raise _problem("needs an [smtp] section to send the digest through", key="digest")
        return self

    @property
    def source(self) -> Path | None:
        """The file this configuration was loaded from (None when built in code)."""
        return self._source

    @property
    def store_url(self) -> str:
        """The SQLAlchemy URL of the database (defaults resolved)."""
        return self.store.url

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None when the store is not a SQLite file."""
        return self.store.sqlite_path

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data keyed like the file, without secrets.

        Secrets are never in the models; the one value that can carry a password written
        inline, the store URL, has it masked.
        """
        data = self.model_dump(mode="json", by_alias=True)
        data["store"]["url"] = self.store.redacted_url
        if not data.get("account"):
            data.pop("account", None)  # the one-mailbox form
        if data.get("imap") is None:
            data.pop("imap", None)
        return data


# --- finding and loading the file ---------------------------------------------------------


def _xdg_dir(env: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = env.get(variable, "")
    if value and Path(value).is_absolute():  # the XDG spec says to ignore relative values
        return Path(value)
    return Path(_expand_home("~/" + fallback, env))


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where state lives: systemd's ``$STATE_DIRECTORY`` (its first entry when it lists
    several, colon-separated), else ``$XDG_STATE_HOME/inbox-guard``
    (``~/.local/state/inbox-guard`` by default)."""
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    if first:
        return Path(first)
    return _xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "inbox-guard"


def config_candidates(env: Mapping[str, str] = os.environ) -> list[Path]:
    """The files looked at, in order, when neither ``--config`` nor the variable is given:
    systemd's ``$CONFIGURATION_DIRECTORY`` (under a unit with ConfigurationDirectory=),
    the user's XDG directory, then ``/etc/inbox-guard``."""
    user = _xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "inbox-guard" / "config.toml"
    unit = env.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    return [*([Path(unit) / "config.toml"] if unit else []), user, SYSTEM_CONFIG_PATH]


def find_config_path(
    explicit: Path | None,
    env: Mapping[str, str] = os.environ,
    *,
    system_path: Path | None = None,
) -> Path:
    """The configuration file to use: ``--config FILE``, else ``$INBOX_GUARD_CONFIG``, else
    ``$XDG_CONFIG_HOME/inbox-guard/config.toml``, else ``/etc/inbox-guard/config.toml``.

    A file named explicitly (option or variable) must exist; it never silently falls back.
    ``system_path`` replaces the ``/etc`` location (for tests).
    """
    if explicit is not None:
        return _existing_file(explicit, "--config")
    from_env = env.get(CONFIG_ENV_VAR, "")
    if from_env:
        return _existing_file(Path(_expand_home(from_env, env)), f"${CONFIG_ENV_VAR}")
    candidates = config_candidates(env)
    if system_path is not None:
        candidates[-1] = system_path
    for candidate in candidates:
        if candidate.is_file():
            return candidate.absolute()
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise ConfigError(
        f"no configuration file found (tried {tried}); pass --config FILE or set ${CONFIG_ENV_VAR}"
    )


def _existing_file(path: Path, origin: str) -> Path:
    if path.is_file():
        return path.absolute()
    what = "is not a file" if path.exists() else "does not exist"
    raise ConfigError(f"{path}: configuration file (from {origin}) {what}")


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Find (see :func:`find_config_path`), read and validate the configuration."""
    path = find_config_path(path, env)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_toml_error(exc)}") from None
    return _validate(data, source=path, env=env)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    # Python 3.14 has exc.msg/lineno/colno; before that the position is only in the text,
    # as "Invalid value (at line 3, column 8)".
    lineno, colno = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    if isinstance(lineno, int) and isinstance(colno, int):
        return f"line {lineno}, column {colno}: invalid TOML: {getattr(exc, 'msg', exc)}"
    text = str(exc)
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", text, re.DOTALL)
    if match is None:
        return f"invalid TOML: {text}"
    return f"line {match.group(2)}, column {match.group(3)}: invalid TOML: {match.group(1)}"


def _validate(data: dict[str, Any], *, source: Path, env: Mapping[str, str]) -> Config:
    context = _LoadContext(base_dir=source.parent, env=env)
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems = tuple(_describe(error) for error in exc.errors(include_input=True))
        raise ConfigError(f"{source}: " + "; ".join(problems), problems=problems) from None
    config._source = source
    return config


# --- turning pydantic's errors into our one-line messages ----------------------------------

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


def _describe(error: Any) -> str:
    """One problem as ``dotted.key: message``; the offending value is never repeated."""
    loc = tuple(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "guard_config":
        if "key" in context:
            loc = (*loc, context["key"])
        return _located(loc, str(context["text"]))
    if kind == "extra_forbidden":
        return _unknown_key(loc, is_table=isinstance(error.get("input"), dict))
    if kind == "missing":
        if len(loc) == 1 and _model_at(loc) is not None:
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


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that ``loc`` points at, walking down from :class:`Config`."""
    model: type[BaseModel] | None = Config
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


def _unknown_key(loc: tuple[Any, ...], *, is_table: bool) -> str:
    parent, key = loc[:-1], str(loc[-1])
    model = _model_at(parent)
    fields = model.model_fields.items() if model else ()
    known = [str(field.validation_alias or name) for name, field in fields]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not parent and is_table:
        hint = f" (did you mean [{close[0]}]?)" if close else ""
        return f"unknown section [{key}]{hint}"
    hint = f' (did you mean "{_dotted((*parent, close[0]))}"?)' if close else ""
    return f'unknown key "{_dotted(loc)}"{hint}'


# --- secrets ------------------------------------------------------------------------------


def resolve_secret(
    kind: str,
    *,
    file: Path | None,
    command: str | None,
    credential: str,
    env: Mapping[str, str] = os.environ,
    timeout: float = SECRET_COMMAND_TIMEOUT,
) -> Secret:
    """Fetch a secret the way the configuration says.

    ``kind`` is the dotted name the keys derive from (``"imap.password"`` means the keys
    ``imap.password_command`` and ``imap.password_file``). Order: the command (run through
    ``/bin/sh -c`` like mbsync's ``PassCmd``: no stdin, first line of stdout), else the file
    (first line; refused when every user can read it), else the systemd credential
    ``$CREDENTIALS_DIRECTORY/<credential>`` (``LoadCredential=``). Surrounding whitespace
    is stripped; an empty secret is an error. Errors never show the secret or the command's
    output.
    """
    return _resolve(
        kind,
        file=file,
        file_key=f"{kind}_file",
        command=command,
        command_key=f"{kind}_command",
        credential=credential,
        env=env,
        timeout=timeout,
    )


def _resolve(
    kind: str,
    *,
    file: Path | None,
    file_key: str | None,
    command: str | None,
    command_key: str,
    credential: str,
    env: Mapping[str, str],
    timeout: float,
) -> Secret:
    if command is not None:
        return _first_line(_run_secret_command(command, command_key, env, timeout), command_key)
    if file is not None:
        return _first_line(_read_secret_file(file, file_key or kind), file_key or kind)
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if directory:
        path = Path(directory) / credential
        if path.is_file():
            where = f"{kind}: systemd credential {credential}"
            return _first_line(_read_limited(path, where), where)
    keys = [key for key in (file_key, command_key) if key is not None]
    looked = " (not in $CREDENTIALS_DIRECTORY)" if directory else ""
    raise ConfigError(
        f"{kind}: not configured; set {_or_list(keys)}, "
        f'or provide the systemd credential "{credential}"{looked}'
    )


def _first_line(raw: bytes, where: str) -> Secret:
    try:
        text = raw.split(b"\n", 1)[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the secret is not valid UTF-8") from None
    if not text:
        raise ConfigError(f"{where}: the secret is empty")
    return Secret(text)


def _read_limited(path: Path, where: str) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(_SECRET_READ_LIMIT)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None


def _read_secret_file(path: Path, key: str) -> bytes:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if mode & stat.S_IROTH:
        # As ssh does for private keys: a secret every local user can read is not a secret.
        raise ConfigError(
            f"{key}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to use it; run: chmod o-rwx {path}"
        )
    if mode & stat.S_IRGRP:
        logging.getLogger("inbox-guard").warning(
            "%s: %s is readable by its group (mode %04o); consider: chmod 600 %s",
            key,
            path,
            stat.S_IMODE(mode),
            path,
        )
    return _read_limited(path, key)


def _run_secret_command(command: str, key: str, env: Mapping[str, str], timeout: float) -> bytes:
    """Run ``command`` with ``/bin/sh -c``; its stderr is discarded (it may hold the secret)."""
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,  # its own process group, so a timeout kills children too
        )
    except OSError as exc:
        raise ConfigError(f"{key}: cannot run /bin/sh: {exc.strerror or exc}") from None
    with process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise ConfigError(f"{key}: did not finish within {timeout:g} seconds") from None
    status = process.returncode
    if status < 0:
        raise ConfigError(f"{key}: killed by signal {-status}")
    if status != 0:
        hint = {126: " (not executable)", 127: " (command not found)"}.get(status, "")
        raise ConfigError(f"{key}: exited with status {status}{hint}")
    return output
