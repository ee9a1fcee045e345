"""Fixtures and options for the fault suite: seeds, the soak switch, proxies, an OAuth2 Dovecot.

Every fault scenario takes a ``seed`` and runs once per seed: a few seeds by default (the
fast variant, part of ``make test``), many with the soak switch, which also enables the
tests marked ``soak`` (long waits, such as a silently dead IDLE connection noticed only at
its renewal). Turn it on with ``INBOX_GUARD_SOAK=1`` (works from any directory) or
``--soak`` (only when ``tests/reliability`` is named on the command line, since pytest
reads options from the conftest files it loads at start). ``INBOX_GUARD_SEED=N`` shifts
every seed by N, to try cut points no run has tried before; a failing run names its seed
in the test id, so ``-k 'seed7'`` replays it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from support.closing import made_by
from support.proxy import FaultProxy
from support.servers import CertPair, Dovecot, MailAccount, ServerError

SOAK_ENV = "INBOX_GUARD_SOAK"
SEED_ENV = "INBOX_GUARD_SEED"
FAST_SEEDS = 3
SOAK_SEEDS = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help=f"run the long fault variants (many seeds, slow scenarios); or {SOAK_ENV}=1",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "seeds(fast=3, soak=20): how many seeded runs a fault scenario gets in each variant",
    )
    config.addinivalue_line(
        "markers", f"soak: a long scenario, run only with --soak or {SOAK_ENV}=1"
    )


def soak_enabled(config: pytest.Config) -> bool:
    if os.environ.get(SOAK_ENV, "").strip() not in ("", "0"):
        return True
    try:
        return bool(config.getoption("--soak"))
    except ValueError:  # this conftest was loaded after the command line was parsed
        return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("seeds")
    counts = {"fast": FAST_SEEDS, "soak": SOAK_SEEDS, **(marker.kwargs if marker else {})}
    runs = counts["soak" if soak_enabled(metafunc.config) else "fast"]
    base = int(os.environ.get(SEED_ENV, "0") or 0)
    seeds = [base + n for n in range(runs)]
    metafunc.parametrize("seed", seeds, ids=[f"seed{s}" for s in seeds])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if soak_enabled(config):
        return
    skip = pytest.mark.skip(reason=f"long soak scenario: run with --soak or {SOAK_ENV}=1")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether this is the soak variant (longer bounded waits are allowed then)."""
    return soak_enabled(request.config)


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    """``proxy_factory(target_port, seed=...)``: fault proxies, closed after the test."""
    yield from made_by(FaultProxy, FaultProxy.close)


# --------------------------------------------------------------------------- OAuth2 Dovecot


class Introspection:
    """An OAuth2 token introspection endpoint (RFC 7662) on loopback for Dovecot's oauth2
    passdb: tokens in :attr:`valid` are active for their user, every other one is not
    (an expired token looks exactly like that to the server)."""

    def __init__(self) -> None:
        self.valid: dict[str, str] = {}
        self.asked: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode(errors="replace")
                token = ""
                for pair in form.split("&"):
                    key, _, value = pair.partition("=")
                    if key == "token":
                        token = value
                owner.asked.append(token)
                user = owner.valid.get(token)
                body = json.dumps(
                    {"active": True, "username": user} if user else {"active": False}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/introspect"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OAuthDovecot(Dovecot):
    """The test Dovecot plus XOAUTH2/OAUTHBEARER checked by an oauth2 passdb against
    :class:`Introspection`; password logins still work as usual."""

    def __init__(self, introspection_url: str, **options: Any) -> None:
        self.introspection_url = introspection_url
        super().__init__(**options)

    def _write_conf(self) -> None:
        super()._write_conf()
        text = self.conf.read_text()
        static = "passdb {\n  driver = static\n"
        if static not in text or "auth_mechanisms = plain login\n" not in text:
            raise ServerError("the Dovecot test config changed: cannot add the oauth2 passdb")
        oauth_conf = self.dir / "oauth2.conf.ext"
        oauth_conf.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self.introspection_url}\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        text = text.replace(
            "auth_mechanisms = plain login\n", "auth_mechanisms = plain login xoauth2 oauthbearer\n"
        ).replace(
            static,
            "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {oauth_conf}\n}}\n{static}  mechanisms = plain login\n",
        )
        self.conf.write_text(text)


@pytest.fixture(scope="session")
def introspection() -> Iterator[Introspection]:
    server = Introspection()
    yield server
    server.close()


@pytest.fixture(scope="session")
def oauth_dovecot(tls_cert: CertPair, introspection: Introspection) -> Iterator[OAuthDovecot]:
    try:
        server = OAuthDovecot(introspection.url, cert=tls_cert)
    except ServerError as exc:
        pytest.fail(f"Dovecot with an oauth2 passdb could not start: {exc}", pytrace=False)
    yield server
    server.close()


@pytest.fixture
def oauth_mailbox(oauth_dovecot: OAuthDovecot, request: pytest.FixtureRequest) -> MailAccount:
    return oauth_dovecot.account(request.node.name)
