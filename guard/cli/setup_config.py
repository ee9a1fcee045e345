"""The answers of ``inbox-guard setup`` and the TOML file they become.

:func:`build_doc` takes the existing file as plain TOML data and replaces only what setup
manages (the mailbox's server, login, secret reference, folders and label mode; the SMTP
server and the digest), so keys written by hand in other sections stay; :func:`render_toml`
writes it back with comments, leaving out values equal to their defaults.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.config import Secret
from guard.config.providers import Provider, default_port

# ------------------------------------------------------------------------------ answers


@dataclass
class ServerAnswers:
    """How one server (IMAP or SMTP) is reached and logged in to."""

    host: str
    port: int
    tls: str
    username: str | None
    ca_file: str | None = None
    oauth2_command: str | None = None
    secret: Secret | None = None
    """A password typed (or read) now; None keeps ``kept`` (the current secret keys)."""
    kept: dict[str, Any] = field(default_factory=dict)
    """The secret keys of the existing file, kept when no new secret was given."""


@dataclass
class Plan:
    """Everything setup will write."""

    config_path: Path
    account: str | None  # None: the one-mailbox form, [imap]
    address: str
    provider: Provider
    imap: ServerAnswers
    folders: tuple[str, ...] | None = None  # None: INBOX and the \Sent folder
    label_mode: str = "auto"
    smtp: ServerAnswers | None = None  # None: no digest
    smtp_own_secret: bool = False  # else the IMAP secret is used for SMTP too
    digest_to: str | None = None
    digest_from: str | None = None
    digest_time: str = "08:00"
    secret_store: str = "file"  # "file" (0600 beside the config) or "credential"

    @property
    def secret_name(self) -> str:
        return "imap-password" if self.account is None else f"imap-password-{self.account}"

    @property
    def smtp_secret_name(self) -> str:
        return "smtp-password"


# ------------------------------------------------------------------------------ TOML


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ORDER = (
    "imap",
    "account",
    "labels",
    "store",
    "policy",
    "smtp",
    "digest",
    "schedule",
    "evidence",
    "drafts",
)
_SECTION_NOTES = {
    "imap": "The work mailbox to guard (config/README.md lists every key).",
    "account": "One mailbox of several.",
    "labels": "How risky threads are marked on the server.",
    "store": "Where findings are kept.",
    "smtp": "How the daily digest is sent.",
    "digest": "The daily summary, mailed to your other address.",
}
_KEY_NOTES = {
    "password_file": "first line; readable by you only (chmod 600)",
    "oauth2_token_command": "prints a fresh OAuth2 access token (XOAUTH2 login)",
    "ca_file": "trust this CA instead of the system's",
    "folders": "default: INBOX and the folder marked \\Sent",
    "time": "HH:MM, 24-hour clock",
}


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"no TOML spelling for {type(value).__name__}")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit(lines: list[str], path: str, table: dict[str, Any], *, array: bool = False) -> None:
    header = f"[[{path}]]" if array else f"[{path}]"
    note = _SECTION_NOTES.get(path)
    lines.append("")
    if note:
        lines.append(f"# {note}")
    lines.append(header)
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict) or _is_table_list(value):
            subtables.append((key, value))
            continue
        line = f"{toml_key(key)} = {toml_value(value)}"
        if key in _KEY_NOTES:
            line += f"  # {_KEY_NOTES[key]}"
        lines.append(line)
    for key, value in subtables:
        sub = f"{path}.{toml_key(key)}"
        if isinstance(value, dict):
            _emit(lines, sub, value)
        else:
            for item in value:
                _emit(lines, sub, item, array=True)


_ADDRESS_LINE = re.compile(r"^# Work address: (\S+@\S+)$", re.MULTILINE)


def render_toml(
    doc: dict[str, Any], *, address: str | None = None, written_at: dt.datetime | None = None
) -> str:
    """``doc`` as a commented TOML file (sections in the usual order, then any others);
    ``address``, the work address, is noted in a comment for the next run of setup."""
    when = (written_at or dt.datetime.now()).strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# inbox-guard configuration, written by `inbox-guard setup` on {when}.",
        "# Only values that differ from the defaults are here; config/README.md and",
        "# config/inbox-guard.example.toml list every key. Run `inbox-guard setup` again to",
        "# change it (a dated backup of this file is kept), or edit it by hand.",
        "# No password is in this file: it names the file or command that holds it.",
    ]
    if address and "\n" not in address:
        lines.append(f"# Work address: {address}")
    names = [n for n in _ORDER if n in doc] + [n for n in doc if n not in _ORDER]
    for name in names:  # keys outside any table must come before the first table
        if not isinstance(doc[name], dict) and not _is_table_list(doc[name]):
            lines.append(f"{toml_key(name)} = {toml_value(doc[name])}")
    for name in names:
        value = doc[name]
        if isinstance(value, dict):
            _emit(lines, toml_key(name), value)
        elif _is_table_list(value):
            for item in value:
                _emit(lines, toml_key(name), item, array=True)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ plan -> doc

_SERVER_KEYS = (
    "host",
    "port",
    "tls",
    "username",
    "password_file",
    "password_command",
    "oauth2_token_command",
    "ca_file",
)
SECRET_KEYS = ("password_file", "password_command", "oauth2_token_command")


def noted_address(path: Path) -> str | None:
    """The work address a previous run of setup noted in the file, if any."""
    try:
        found = _ADDRESS_LINE.search(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def read_raw(path: Path) -> dict[str, Any]:
    """The existing file as plain TOML data ({} when there is none)."""
    if not path.exists():
        return {}
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _server_table(
    old: dict[str, Any],
    answers: ServerAnswers,
    protocol: str,
    secret_ref: dict[str, Any],
) -> dict[str, Any]:
    table = {k: v for k, v in old.items() if k not in _SERVER_KEYS}
    new: dict[str, Any] = {"host": answers.host}
    default_tls = "implicit" if protocol == "imap" else "starttls"
    if answers.tls != default_tls:
        new["tls"] = answers.tls
    if answers.port != default_port(protocol, answers.tls):
        new["port"] = answers.port
    if answers.username:
        new["username"] = answers.username
    if answers.oauth2_command:
        new["oauth2_token_command"] = answers.oauth2_command
    else:
        new.update(secret_ref)
    if answers.ca_file:
        new["ca_file"] = answers.ca_file
    return {**new, **table}


def _secret_ref(plan: Plan, answers: ServerAnswers, path: Path | None) -> dict[str, Any]:
    """The secret keys for a server: the file written now, or what the file had."""
    if answers.secret is None:
        return dict(answers.kept)
    if plan.secret_store == "credential" or path is None:
        return {}  # the systemd credential, found by name
    return {"password_file": _relative(path, plan.config_path.parent)}


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def build_doc(
    raw: dict[str, Any],
    plan: Plan,
    imap_secret: Path | None,
    smtp_secret: Path | None,
) -> dict[str, Any]:
    """The file's data: ``raw`` (the existing file) with what setup manages replaced."""
    doc = json.loads(json.dumps(raw, default=str))  # a deep copy (times become text)
    for key, value in raw.items():  # keep TOML times and dates as they were
        if isinstance(value, dict):
            for sub, item in value.items():
                if isinstance(item, dt.time | dt.date):
                    doc[key][sub] = item
    imap = _server_table(
        old_imap(doc, plan.account), plan.imap, "imap", _secret_ref(plan, plan.imap, imap_secret)
    )
    if plan.folders is not None:
        imap["folders"] = list(plan.folders)
    else:
        imap.pop("folders", None)
    if plan.account is None:
        doc["imap"] = imap
        _set_label_mode(doc, plan.label_mode)
    else:
        entry = _account_entry(doc, plan.account)
        entry["imap"] = imap
        _set_label_mode(entry, plan.label_mode)
    if plan.smtp is not None:
        if plan.smtp_own_secret:
            ref = _secret_ref(plan, plan.smtp, smtp_secret)
        else:
            ref = {k: v for k, v in imap.items() if k in SECRET_KEYS}
        doc["smtp"] = _server_table(doc.get("smtp", {}), plan.smtp, "smtp", ref)
        digest = {k: v for k, v in doc.get("digest", {}).items() if k not in ("to", "from")}
        top_to = doc.get("digest", {}).get("to") if plan.account else None
        if plan.account and top_to and top_to != plan.digest_to:
            _account_entry(doc, plan.account)["digest_to"] = plan.digest_to
        else:
            digest["to"] = plan.digest_to
        digest["from"] = plan.digest_from or plan.address
        if plan.digest_time == "08:00":
            digest.pop("time", None)
        else:
            digest["time"] = plan.digest_time
        doc["digest"] = {"to": digest.pop("to"), "from": digest.pop("from"), **digest}
    elif plan.account is None:
        doc.pop("smtp", None)
        doc.pop("digest", None)
    return doc


def old_imap(doc: dict[str, Any], account: str | None) -> dict[str, Any]:
    if account is None:
        return dict(doc.get("imap", {}))
    for entry in doc.get("account", []):
        if entry.get("name") == account:
            return dict(entry.get("imap", {}))
    return {}


def _account_entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``[[account]]`` named ``name``, made if needed; a one-mailbox file becomes the
    account "default" (the name its store records already carry)."""
    accounts = doc.setdefault("account", [])
    if "imap" in doc:
        accounts.insert(0, {"name": "default", "imap": doc.pop("imap")})
    for entry in accounts:
        if entry.get("name") == name:
            return entry
    entry = {"name": name}
    accounts.append(entry)
    return entry


def _set_label_mode(table: dict[str, Any], mode: str) -> None:
    labels = dict(table.get("labels", {}))
    if mode == "auto":
        labels.pop("mode", None)
    else:
        labels["mode"] = mode
    if labels:
        table["labels"] = labels
    else:
        table.pop("labels", None)
