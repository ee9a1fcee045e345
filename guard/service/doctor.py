"""``inbox-guard doctor``: check every link from the configuration to the mailbox.

Each check gives one line: what was checked, what was found, and on failure a hint on
how to fix it. Later checks that depend on a failed one are skipped (a login cannot be
tried when the host name does not resolve). Nothing is written to the mailbox; the
database check writes nothing either (it takes and releases a write lock).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from guard.config import Account, Config, ConfigError, ImapSettings, load_config
from guard.mailbox import SENT, Connection, ImapError, server_settings
from guard.mailbox.label_backends import fixed_mode, keyword_mode


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    hint: str = ""


def _hint_for(kind: str, imap: ImapSettings) -> str:
    return {
        "dns": "check imap.host for typos, and that this machine can resolve names",
        "refused": f"check imap.port ({imap.port}) and imap.tls ({imap.tls}); "
        "993 is implicit TLS, 143 STARTTLS",
        "timeout": "a firewall may drop the connection, or the port is wrong",
        "tls": "the server's certificate is not trusted: for a private CA set imap.ca_file",
        "login": "check imap.username and the password; Gmail and Fastmail need an app "
        "password, Microsoft 365 an OAuth2 token (imap.oauth2_token_command)",
        "config": "run the password/token command by hand to see what it prints",
        "folder": "list the server's folders with a mail client; names are case-sensitive",
    }.get(kind, "")


def run_checks(config_path: Path | None, env: Mapping[str, str] = os.environ) -> Iterator[Check]:
    try:
        config = load_config(config_path, env)
    except ConfigError as exc:
        yield Check("config", False, str(exc), "fix the file; see config/README.md")
        return
    yield Check("config", True, f"read {config.source}")
    yield from _rules(config)
    several = len(config.accounts) > 1
    for acct in config.accounts:
        checks = _account_checks(config, acct, env)
        if several:
            checks = (Check(f"[{acct.name}] {c.name}", c.ok, c.detail, c.hint) for c in checks)
        yield from checks
    yield from _database(config)
    yield from _smtp(config, env)


def _rules(config: Config) -> Iterator[Check]:
    from guard.policy import RulesError, load_rules

    try:
        rules = load_rules(list(config.policy.rules))
        rules.atom_set.compile()  # what a scan would otherwise find at its first message
    except RulesError as exc:
        yield Check("rules", False, str(exc), "fix the rules file named above")
        return
    extra = f" + {len(config.policy.rules)} file(s)" if config.policy.rules else ""
    yield Check("rules", True, f"{len(rules.text_rules)} text rules loaded{extra}")


def _account_checks(config: Config, acct: Account, env: Mapping[str, str]) -> Iterator[Check]:
    secret_ok = yield from _secret(acct, env)
    yield from _imap(config, acct, env, secret_ok)


def _secret(acct: Account, env: Mapping[str, str]) -> Generator[Check, None, bool]:
    imap = acct.imap
    what = "OAuth2 token" if imap.uses_oauth2 else "password"
    try:
        secret = imap.oauth2_token(env) if imap.uses_oauth2 else imap.password(env)
    except ConfigError as exc:
        yield Check("imap secret", False, str(exc), _hint_for("config", imap))
        return False
    del secret  # read (an empty one is a ConfigError); nothing about it is shown
    yield Check("imap secret", True, f"{what} found")
    return True


def _imap(
    config: Config, acct: Account, env: Mapping[str, str], secret_ok: bool
) -> Iterator[Check]:
    imap = acct.imap
    try:
        infos = socket.getaddrinfo(imap.host, imap.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        yield Check("dns", False, f"{imap.host}: {exc.strerror}", _hint_for("dns", imap))
        return
    addresses = sorted({str(i[4][0]) for i in infos})
    yield Check("dns", True, f"{imap.host} -> {', '.join(addresses[:3])}")
    try:
        with socket.create_connection((imap.host, imap.port), timeout=float(imap.timeout)):
            pass
    except OSError as exc:
        kind = "refused" if isinstance(exc, ConnectionRefusedError) else "timeout"
        yield Check("tcp", False, f"{imap.host}:{imap.port}: {exc}", _hint_for(kind, imap))
        return
    yield Check("tcp", True, f"{imap.host}:{imap.port} reachable")
    if not secret_ok:
        yield Check("login", None, "skipped: no secret")
        return
    conn = Connection(server_settings(config, acct.name))
    try:
        conn.open()
    except ImapError as exc:
        name = "tls" if exc.kind == "tls" else "login"
        yield Check(name, False, str(exc), _hint_for(exc.kind, imap))
        return
    try:
        tls = {
            "implicit": "TLS (implicit), certificate verified",
            "starttls": "STARTTLS, certificate verified",
            "none": "no TLS (loopback only): nothing is encrypted, no certificate to verify",
        }
        yield Check("tls", True, tls[imap.tls])
        yield Check("login", True, f"logged in as {imap.username}")
        wanted = ("IDLE", "CONDSTORE", "SPECIAL-USE", "UIDPLUS", "X-GM-EXT-1", "MOVE")
        present = [c for c in wanted if c in conn.capabilities]
        yield Check("capabilities", True, " ".join(present) or "(none of the useful ones)")
        yield from _folders(conn, acct.labels.mode, imap)
    except ImapError as exc:
        yield Check("imap", False, str(exc), _hint_for(exc.kind, imap))
    finally:
        conn.close()


def _folders(conn: Connection, label_mode: str, imap: ImapSettings) -> Iterator[Check]:
    sent = conn.special_folder(SENT)
    folders = list(imap.folders) if imap.folders else ["INBOX", *([sent] if sent else [])]
    if not imap.folders and not sent:
        yield Check("folders", None, "no special-use \\Sent folder: only INBOX is scanned")
    for folder in folders:
        try:
            status = conn.status(folder)
        except ImapError as exc:
            yield Check(f"folder {folder}", False, str(exc), _hint_for(exc.kind, imap))
            continue
        yield Check(f"folder {folder}", True, f"{status.messages} messages, readable")
    mode, why = _label_mode(conn, label_mode)
    yield Check("labels", True, f"{mode}: {why}")


def _label_mode(conn: Connection, configured: str) -> tuple[str, str]:
    fixed = fixed_mode(configured, conn.is_gmail)
    if fixed == "gmail":
        return "gmail", "the server speaks X-GM-EXT-1: Gmail labels"
    if fixed == "folders":
        return "folders", "labels.mode = folders"
    # Only a read-write SELECT shows PERMANENTFLAGS; SELECT changes no message.
    mode = keyword_mode(configured, conn.select("INBOX", readonly=False).keywords_allowed)
    why = {
        "keywords": "labels.mode = keywords and PERMANENTFLAGS allows \\*",
        "keywords+folders": "PERMANENTFLAGS allows custom keywords (\\*); label folders are "
        "added for clients that do not show keywords",
        "folders": "the server does not allow custom keywords: label folders only",
    }
    return mode, why[mode]


def _database(config: Config) -> Iterator[Check]:
    from guard.store import Store, StoreError, describe_error

    try:
        store = Store(config.store.url)
    except StoreError as exc:
        yield Check("database", False, str(exc), "check store.url and the directory's owner")
        return
    try:
        with store.engine.connect() as conn:
            if store.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
            else:
                conn.begin()
            conn.execute(sa.text("SELECT COUNT(*) FROM message")).scalar()
            conn.rollback()
    except sa.exc.SQLAlchemyError as exc:
        yield Check(
            "database",
            False,
            f"{config.store.redacted_url}: {describe_error(exc)}",
            "another process may hold the database, or the disk is full/read-only",
        )
        return
    else:
        yield Check(
            "database", True, f"{config.store.redacted_url} writable, schema v{store.version}"
        )
        yield from _daemons(config, store)
    finally:
        store.close()


def _daemons(config: Config, store: Any) -> Iterator[Check]:
    """On PostgreSQL: the daemons sharing the store and the mailboxes each owns."""
    from guard.store import describe_error, is_postgres, replicas

    if not is_postgres(store.engine):
        return
    try:
        live = replicas(store.engine, float(config.store.lease))
    except sa.exc.SQLAlchemyError as exc:
        yield Check("daemons", False, describe_error(exc), "check the database")
        return
    if not live:
        yield Check("daemons", True, "no daemon is running on this store")
        return
    owned = {a for r in live for a in r.accounts}
    orphans = [a.name for a in config.accounts if a.name not in owned]
    parts = [f"{r.id}: {', '.join(r.accounts) or 'no mailbox yet'}" for r in live]
    detail = f"{len(live)} running; " + "; ".join(parts)
    if orphans:
        yield Check(
            "daemons",
            False,
            detail + f"; not owned: {', '.join(orphans)}",
            f"a mailbox is taken over within [store] lease ({config.store.lease} s) of its "
            "daemon's end; if this lasts, check the daemons' logs",
        )
    else:
        yield Check("daemons", True, detail)


def _smtp(config: Config, env: Mapping[str, str]) -> Iterator[Check]:
    if config.smtp is None or config.digest is None:
        yield Check("smtp", None, "no [smtp]/[digest]: no daily digest will be sent")
        return
    try:
        from guard import reports
    except ImportError:
        yield Check("smtp", None, "digest support not installed")
        return
    checker: Callable[..., str] | None = getattr(reports, "check_smtp", None)
    if checker is None:
        yield Check("smtp", None, "SMTP check not available")
        return
    try:
        detail = checker(config, env)
    except (ConfigError, OSError, ssl.SSLError) as exc:
        yield Check("smtp", False, str(exc), "check [smtp] host, port, tls and the password")
        return
    except Exception as exc:  # smtplib errors carry the server's reply
        yield Check("smtp", False, " ".join(str(exc).split())[:200], "check [smtp] settings")
        return
    yield Check("smtp", True, detail)
