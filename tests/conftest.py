"""Fixtures for the integration tests: real servers on 127.0.0.1 (``tests/support/servers.py``).

Nothing starts unless a test asks for it: session-scoped ``dovecot`` and ``postgres`` start on
first use; ``mailbox``, ``gmail``, ``postgres_url``, ``smtp_sink`` and ``smtp_sink_factory`` are
per test, and so are ``daemons`` (``inbox-guard run`` subprocesses, ``tests/support/cli.py``)
and ``store_url`` (each test once on SQLite, once on PostgreSQL).
A server that cannot start makes the test fail (error at setup), never skip: run
``tests/support/install-test-servers`` (``make test`` does) to install them.

Test files import the helpers as ``from support.servers import ...``: this file puts ``tests/``
on ``sys.path`` (pytest's default prepend import mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from support.cli import Daemon
from support.closing import made_by
from support.servers import (
    CertPair,
    Dovecot,
    Hoodiecrow,
    MailAccount,
    Postgres,
    ServerError,
    SmtpSink,
    make_cert,
)

T = TypeVar("T")


def _cannot_start(what: str, exc: Exception) -> NoReturn:
    pytest.fail(f"{what} could not start: {exc}", pytrace=False)


def _start(what: str, factory: Callable[[], T]) -> T:
    try:
        return factory()
    except ServerError as exc:
        error = exc  # fail outside the except block: no "during handling" traceback noise
    _cannot_start(what, error)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    """One self-signed certificate (CN=localhost, IP:127.0.0.1) for every TLS server here.

    ``tls_cert.ca_file`` is the CA file that verifies Dovecot, Hoodiecrow (tls=True) and
    the SMTP sink alike.
    """
    return _start("openssl", lambda: make_cert(tmp_path_factory.mktemp("cert")))


@pytest.fixture(scope="session")
def dovecot(tls_cert: CertPair) -> Iterator[Dovecot]:
    """The session's Dovecot; use ``mailbox`` for a fresh user of it."""
    server = _start("Dovecot", lambda: Dovecot(cert=tls_cert))
    yield server
    server.close()


@pytest.fixture
def mailbox(dovecot: Dovecot, request: pytest.FixtureRequest) -> MailAccount:
    """A fresh, empty Dovecot user (named after the test) with helpers bound to it."""
    if not dovecot.running:  # an earlier test stopped it and did not get to start it again
        _start("Dovecot", dovecot.start)
    return dovecot.account(request.node.name)


@pytest.fixture
def gmail() -> Iterator[Hoodiecrow]:
    """A fresh Gmail emulation (hoodiecrow, plain IMAP, testuser/testpass), empty."""
    server = _start("Hoodiecrow", Hoodiecrow)
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL; ``postgres.url`` is its ``postgres`` database (shared)."""
    server = _start("PostgreSQL", Postgres)
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a new, empty database of its own for this test."""
    if not postgres.running:
        _start("PostgreSQL", postgres.start)
    return postgres.create_database(request.node.name)


@pytest.fixture
def smtp_sink(tls_cert: CertPair) -> Iterator[SmtpSink]:
    """An SMTP server that keeps what it receives, offering STARTTLS and then AUTH.

    Neither is required, so plain clients work too. Credentials ``smtp_sink.username`` /
    ``smtp_sink.password``; TLS verifies with ``smtp_sink.ca_file``.
    """
    sink = _start("SMTP sink", lambda: SmtpSink(starttls=True, auth=True, cert=tls_cert))
    yield sink
    sink.close()


@pytest.fixture
def smtp_sink_factory(tls_cert: CertPair) -> Iterator[Callable[..., SmtpSink]]:
    """``smtp_sink_factory(**SmtpSink options)``: more sinks (e.g. ``require_auth=True``)."""

    def start(**options: Any) -> SmtpSink:
        options.setdefault("cert", tls_cert)
        return _start("SMTP sink", lambda: SmtpSink(**options))

    yield from made_by(start, SmtpSink.close)


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    """``daemons(config, **Daemon options)``: start ``inbox-guard run``; killed after the test
    if it still runs."""
    yield from made_by(Daemon, Daemon.close)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL, once on SQLite (``tmp_path/guard.sqlite3``), once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))
