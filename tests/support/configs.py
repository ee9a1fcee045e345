"""Configuration files for the tests that run the guard against the real test servers.

One writer, :func:`write_config`: ``[imap]`` for a Dovecot user (STARTTLS verified with the
test CA) or for the Gmail emulation (plain IMAP: it offers no TLS), the password in a 0600
file, ``[store]`` in the test's directory, and any other table a test names as a keyword
(merged key by key into the default of that name; ``None`` removes a key). A list of tables
is an array of tables (``account=[...]`` for several mailboxes, built with
:func:`imap_section`). What a test does not name keeps the guard's defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.servers import Hoodiecrow, MailAccount, SmtpSink

LOOPBACK = "127.0.0.1"
SECRET_KEYS = ("password_file", "password_command", "oauth2_token_command")
Table = Mapping[str, Any]


def secret_file(directory: Path, name: str, value: str, mode: int = 0o600) -> Path:
    """``directory/name`` holding ``value`` and a line break, private to its owner."""
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def imap_section(
    acct: MailAccount | Hoodiecrow, password_file: Path | str | None = None
) -> dict[str, Any]:
    """The connection settings for ``acct``: a Dovecot user over STARTTLS with the test
    CA, or the Gmail emulation over plain IMAP."""
    if isinstance(acct, Hoodiecrow):
        imap: dict[str, Any] = {"host": LOOPBACK, "port": acct.port, "tls": "none"}
        imap["username"] = acct.username
    else:
        imap = {"host": LOOPBACK, "port": acct.port, "tls": "starttls", "username": acct.user}
        imap["ca_file"] = str(acct.ca_file)
    if password_file is not None:
        imap["password_file"] = str(password_file)
    return imap


def smtp_section(tmp: Path, sink: SmtpSink, **overrides: Any) -> dict[str, Any]:
    """``[smtp]`` for ``sink`` over STARTTLS with the test CA, its password in
    ``tmp/smtp-password`` (0600); ``overrides`` replace or (``None``) remove keys."""
    secret = secret_file(tmp, "smtp-password", sink.password)
    return {
        "host": LOOPBACK,
        "port": sink.port,
        "tls": "starttls",
        "username": sink.username,
        "password_file": str(secret),
        "ca_file": str(sink.ca_file),
        **overrides,
    }


def write_config(
    tmp: Path,
    acct: MailAccount | Hoodiecrow | None,
    store_url: str | None = None,
    *,
    password: str | None = None,
    **tables: Table | Sequence[Table],
) -> Path:
    """``tmp/config.toml`` for ``acct`` (no ``[imap]`` when None: give ``account=[...]``).

    Its password (``password``, default the account's) goes to ``tmp/imap-password`` unless
    the ``imap`` table names a secret of its own; the store is ``store_url`` (default
    ``tmp/guard.sqlite3``). ``tables`` add TOML tables or merge into ``imap`` / ``store``.
    """
    doc: dict[str, Any] = {}
    if acct is not None:
        own = tables.get("imap", {})
        pw = None
        if not any(key in own for key in SECRET_KEYS):
            value = acct.password if password is None else password
            pw = secret_file(tmp, "imap-password", value)
        doc["imap"] = imap_section(acct, pw)
    doc["store"] = {"url": store_url or f"sqlite:///{tmp / 'guard.sqlite3'}"}
    for name, value in tables.items():
        doc[name] = {**doc.get(name, {}), **value} if isinstance(value, Mapping) else value
    lines: list[str] = []
    for name, value in doc.items():
        for table in [value] if isinstance(value, Mapping) else value:
            _table(lines, name, table, array=not isinstance(value, Mapping))
    return raw_config(tmp, "\n".join(lines) + "\n")


def raw_config(tmp: Path, text: str) -> Path:
    """``tmp/config.toml`` holding ``text`` as it is: for configurations the guard refuses."""
    path = tmp / "config.toml"
    path.write_text(text)
    return path


def _table(lines: list[str], name: str, values: Table, array: bool = False) -> None:
    lines.append(f"[[{name}]]" if array else f"[{name}]")
    nested = {key: value for key, value in values.items() if isinstance(value, Mapping)}
    lines += [
        f"{key} = {json.dumps(value)}"
        for key, value in values.items()
        if value is not None and key not in nested
    ]
    for key, value in nested.items():
        _table(lines, f"{name}.{key}", value)
