"""The configuration's sections as frozen pydantic models that refuse unknown keys.

:class:`Config` is the whole file; each ``[section]`` is a model of its own, validated
strictly (no type coercion) by the checks in ``fields``. The server sections know where
their secret comes from and fetch it on demand (see ``secrets``); nothing here talks to a
server.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from guard.config.fields import (
    ConfigPath,
    Host,
    Port,
    Seconds,
    Text,
    Tls,
    as_tuple,
    duration_seconds,
    email_address,
    is_loopback,
    load_context,
    one_of,
    problem,
    time_of_day,
    zone_name,
)
from guard.config.paths import SQLITE_FILE_NAME, default_state_dir, expand_home
from guard.config.secrets import SECRET_COMMAND_TIMEOUT, Secret, fetch_secret
from guard.config.wording import ConfigError, and_list, or_list


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

    host: Host
    port: Port = 0  # never used: filled in from the TLS mode by _default_port
    tls: Tls
    username: Text | None = None
    password_file: ConfigPath | None = None
    password_command: Text | None = None
    oauth2_token_command: Text | None = None
    ca_file: ConfigPath | None = None
    timeout: Seconds = 30.0

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
        if self.tls == "none" and not is_loopback(self.host):
            raise problem(
                f'"none" is only allowed for a loopback host (got {self.host})', key="tls"
            )
        chosen = [key for key in self.SECRET_KEYS if getattr(self, key) is not None]
        if len(chosen) > 1:
            raise problem(f"set only one of {or_list(self.SECRET_KEYS)} (found {and_list(chosen)})")
        if chosen and self.username is None:
            raise problem(f"is required when {chosen[0]} is set", key="username")
        return self

    @property
    def uses_oauth2(self) -> bool:
        """Log in with XOAUTH2 (a token from ``oauth2_token_command``) instead of a password."""
        return self.oauth2_token_command is not None

    def password(self, env: Mapping[str, str] = os.environ) -> Secret:
        """The login password: from ``password_command``, else ``password_file``, else the
        systemd credential ``imap-password`` / ``smtp-password`` in ``$CREDENTIALS_DIRECTORY``."""
        return fetch_secret(
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
        return fetch_secret(
            f"{self.SECTION}.oauth2_token",
            file=None,
            file_key=None,
            command=self.oauth2_token_command,
            command_key=f"{self.SECTION}.oauth2_token_command",
            credential=self.OAUTH2_CREDENTIAL,
            env=env,
            timeout=SECRET_COMMAND_TIMEOUT,
        )


class ImapSettings(_ServerSettings):
    """``[imap]``: the work mailbox to guard."""

    SECTION: ClassVar[str] = "imap"
    DEFAULT_PORTS: ClassVar[Mapping[str, int]] = {"implicit": 993, "starttls": 143, "none": 143}
    PASSWORD_CREDENTIAL: ClassVar[str] = "imap-password"
    OAUTH2_CREDENTIAL: ClassVar[str] = "imap-oauth2-token"

    tls: Tls = "implicit"
    username: Text
    folders: Annotated[tuple[Text, ...] | None, BeforeValidator(as_tuple)] = None
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
            raise problem(
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

    tls: Tls = "starttls"


LabelMode = Literal["auto", "gmail", "keywords", "folders"]


class LabelSettings(_Section):
    """``[labels]``: how risky threads are marked on the server."""

    mode: Annotated[LabelMode, one_of("auto", "gmail", "keywords", "folders")] = "auto"
    prefix: Text = "Guard"


class StoreSettings(_Section):
    """``[store]``: the database as an SQLAlchemy URL (default: SQLite in the state directory)."""

    url: str
    lease: Annotated[int, BeforeValidator(duration_seconds), Field(ge=5, le=600)] = 30
    """With several daemons on one PostgreSQL store: seconds after which a daemon that
    stopped renewing its accounts (killed, cut off) loses them to the others."""

    @model_validator(mode="before")
    @classmethod
    def _default_url(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "url" not in data:
            state_dir = default_state_dir(load_context(info).env)
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
            raise problem(
                'must be an SQLAlchemy URL like "sqlite:////var/lib/inbox-guard/db.sqlite3"'
            ) from None
        database = url.database
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return value
        if database.startswith("file:") or Path(database).is_absolute():
            return value
        # A relative SQLite path is taken from the file's directory, like every other path
        # (SQLAlchemy would take it from the working directory, which is / under systemd).
        context = load_context(info)
        resolved = context.base_dir / expand_home(database, context.env)
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

    rules: Annotated[tuple[ConfigPath, ...], BeforeValidator(as_tuple)] = ()
    min_risk: Annotated[RiskLevel, one_of("low", "medium", "high")] = "medium"


class DigestSettings(_Section):
    """``[digest]``: the daily summary mailed to the freelancer's other address."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    to: Annotated[str, BeforeValidator(email_address)]
    # "from" is a Python keyword: the attribute is from_addr, the key in the file is "from".
    from_addr: Annotated[str, BeforeValidator(email_address)] = Field(
        validation_alias="from", serialization_alias="from"
    )
    time: Annotated[dt.time, BeforeValidator(time_of_day)] = dt.time(8, 0)
    timezone: Annotated[str | None, BeforeValidator(zone_name)] = None
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

    poll_interval: Annotated[int, BeforeValidator(duration_seconds)] = 300
    """Seconds between polls; the file may say ``300`` or ``"5m"``."""
    idle: bool = False
    idle_renew: Annotated[int, BeforeValidator(duration_seconds)] = 300
    """Seconds one IDLE lasts before it is renewed; the renewal's round trip is also what
    notices a connection that died silently, so this bounds how long that can go unseen."""
    max_parallel: Annotated[int, Field(ge=1, le=32)] = 2
    """How many mailboxes are scanned at the same time (with several ``[[account]]``)."""


class EvidenceSettings(_Section):
    """``[evidence]``: which original messages are kept in the store, byte for byte."""

    keep: Annotated[str, one_of("risky", "all", "none")] = "risky"
    """``risky``: every message of a flagged thread (kept for good); ``all``: every message
    read; ``none``: no copies (export then needs the messages still on the server)."""


class DraftSettings(_Section):
    """``[drafts]``: polite decline drafts for off-platform requests (off by default)."""

    enabled: bool = False
    templates: ConfigPath | None = None
    """A directory with your own wording: ``decline.<lang>.txt`` (en, es, pt, fr, de, ru)."""
    platform: Text = "the platform"
    """How the drafts name the marketplace, e.g. "Upwork"."""


def _account_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise problem(
            "must be 1-63 letters, digits, '.', '_' or '-', starting with one of the first two"
        )
    return value


class AccountSettings(_Section):
    """One ``[[account]]``: a mailbox of its own, scanned and reported separately."""

    name: Annotated[str, BeforeValidator(_account_name)]
    imap: ImapSettings
    labels: LabelSettings | None = None
    """Label settings for this mailbox (default: the top-level ``[labels]``)."""
    digest_to: Annotated[str | None, BeforeValidator(email_address)] = None
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
    account: Annotated[tuple[AccountSettings, ...], BeforeValidator(as_tuple)] = ()
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
            raise problem("missing section [imap] (or [[account]] blocks)")
        if self.imap is not None and self.account:
            raise problem(
                "use either [imap] for one mailbox or [[account]] blocks, not both", key="imap"
            )
        names = [a.name for a in self.account]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise problem(
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
            raise problem("needs an [smtp] section to send the digest through", key="digest")
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
