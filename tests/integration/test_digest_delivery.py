"""The digest against real parts: an SMTP server on loopback (aiosmtpd, STARTTLS + AUTH,
implicit TLS, XOAUTH2), Dovecot reading the delivered digest back, and headless Chromium
rendering the HTML part built from hostile mail.

Chromium is Debian's ``chromium`` at /usr/bin/chromium (``tests/support/install-test-servers``
installs it); like every real part here, a missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from support import flagged
from support.servers import CertPair, MailAccount, SmtpMessage, SmtpSink

from guard import reports as dg
from guard import store as st
from guard.config import Config

T0 = datetime(2026, 11, 20, 9, 0)
ACCOUNT = "default"
CHROMIUM = Path("/usr/bin/chromium")
SUBJECT = "Website redesign - pay via https://pay.evil.example/checkout"
SUBJECT_DEFANGED = "Website redesign - pay via hxxps://pay[.]evil[.]example/checkout"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[st.Store]:
    s = st.Store(f"sqlite:///{tmp_path / 'guard.sqlite3'}")
    yield s
    s.close()


def secret_file(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def make_config(store: st.Store, **smtp: Any) -> Config:
    smtp = {"host": "127.0.0.1", "tls": "starttls", "timeout": 10.0, **smtp}
    smtp = {key: str(value) if isinstance(value, Path) else value for key, value in smtp.items()}
    return Config.model_validate(
        {
            "imap": {"host": "127.0.0.1", "tls": "none", "username": "me"},
            "smtp": smtp,
            "digest": {
                "to": "Me <me@home.example>",
                "from": "inbox-guard <guard@work.example>",
                "timezone": "Europe/Berlin",
            },
            "store": {"url": store.url},
        }
    )


def sink_config(
    store: st.Store, sink: SmtpSink, tmp_path: Path, password: str | None = None
) -> Config:
    return make_config(
        store,
        port=sink.port,
        username=sink.username,
        password_file=secret_file(tmp_path, "smtp-password", password or sink.password),
        ca_file=sink.ca_file,
    )


def add_thread(
    store: st.Store,
    thread_id: str,
    subject: str,
    *,
    evidence: str = "I can pay you directly via PayPal to avoid the fees",
    sender: str = "client@client.example",
    sender_name: str = "A Client",
    category: str = "off_platform_payment",
    risk: str = "high",
    updated_at: datetime = T0,
) -> None:
    """A thread of one message with one finding (rule payment.pay-directly)."""
    message = {
        "date": updated_at - timedelta(minutes=5),
        "sender": sender,
        "sender_name": sender_name,
        "findings": [("payment.pay-directly", category, evidence)],
    }
    flagged.add_thread(
        store,
        thread_id,
        updated_at=updated_at,
        risk=risk,
        categories=(category,),
        subject=subject,
        messages=[message],
        account=ACCOUNT,
    )


def digest_sent_once(
    store: st.Store, config: Config, thread_id: str = "t1", subject: str = SUBJECT, hours: int = 1
) -> dg.SendResult:
    """Records a flagged thread, builds the digest ``hours`` after T0 (an hour after the
    thread's last change) and sends what is pending: the one result."""
    add_thread(store, thread_id, subject, updated_at=T0 + timedelta(hours=hours - 1))
    dg.build_digest(store, config, now=T0 + timedelta(hours=hours))
    (result,) = dg.send_pending(store, config)
    return result


def digest_rows(store: st.Store) -> list[st.Digest]:
    with store.session() as session:
        return list(session.exec(select(st.Digest).order_by(st.Digest.id)).all())  # type: ignore[arg-type]


def flat(text: str) -> str:
    """White space collapsed: the text part wraps long lines."""
    return " ".join(text.split())


def parts(received: SmtpMessage | bytes) -> tuple[EmailMessage, str, str]:
    """The message and its text and HTML parts (white space collapsed)."""
    if isinstance(received, bytes):
        msg = email.message_from_bytes(received, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
    else:
        msg = received.message
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    return msg, flat(text.get_content()), flat(html.get_content())


def settle(sink: SmtpSink, seconds: float = 0.3) -> None:
    """Give a late (duplicate) delivery time to arrive before counting."""
    time.sleep(seconds)


# --------------------------------------------------------------------------- SMTP


def test_digest_is_sent_over_starttls_with_auth(
    store: st.Store, smtp_sink_factory: Callable[..., SmtpSink], tmp_path: Path
) -> None:
    sink = smtp_sink_factory(require_starttls=True, require_auth=True)
    config = sink_config(store, sink, tmp_path)
    add_thread(store, "t1", SUBJECT)
    row = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    assert row is not None and row.status == "pending"
    assert sink.messages == []  # stored first, nothing sent by building

    results = dg.send_pending(store, config)
    assert [(r.digest_id, r.sent, r.error) for r in results] == [(row.id, True, None)]
    assert dg.summarize(results) == f"digest {row.id} sent to Me <me@home.example>"

    (received,) = sink.wait_for(1)
    assert received.tls and received.auth_user == sink.username
    assert received.mail_from == "guard@work.example"
    assert received.rcpt_tos == ("me@home.example",)
    msg, text, html = parts(received)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Message-ID"] == row.message_id
    assert msg["Subject"] == "inbox-guard: 1 risky thread (1 high) — 2026-11-20"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert SUBJECT_DEFANGED in text and SUBJECT_DEFANGED in html
    assert "https://" not in text and "https://" not in html

    (sent,) = digest_rows(store)
    assert sent.status == "sent" and sent.attempts == 1 and sent.sent_at is not None
    assert sent.last_error is None
    assert dg.send_pending(store, config) == []  # nothing left
    settle(sink)
    assert len(sink.messages) == 1


def test_wrong_password_leaves_the_digest_pending_with_a_clean_error(
    store: st.Store, smtp_sink_factory: Callable[..., SmtpSink], tmp_path: Path
) -> None:
    sink = smtp_sink_factory(require_starttls=True, require_auth=True)
    wrong = "Wrong-Secret-9f3c2e"
    config = sink_config(store, sink, tmp_path, password=wrong)
    result = digest_sent_once(store, config)
    assert not result.sent and result.attempts == 1
    (row,) = digest_rows(store)
    assert row.status == "pending" and row.attempts == 1
    error = row.last_error or ""
    assert error == result.error
    assert error.startswith(f"SMTP login as guard refused by 127.0.0.1:{sink.port} (535")
    assert "\n" not in error
    encoded = base64.b64encode(f"\0guard\0{wrong}".encode()).decode()
    for leak in (wrong, encoded, base64.b64encode(wrong.encode()).decode(), sink.password):
        assert leak not in error
        assert leak not in str(result) and leak not in dg.summarize([result])
    assert sink.messages == []


def test_non_ascii_password_is_a_clean_error_that_quotes_none_of_it(
    store: st.Store, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config = sink_config(store, smtp_sink, tmp_path, password="pässwörd-ß")
    result = digest_sent_once(store, config)
    assert not result.sent
    assert result.error == (
        f"cannot send non-ASCII text to 127.0.0.1:{smtp_sink.port} while logging in "
        "(user name or password?)"
    )


def test_server_down_then_up_sends_exactly_once(
    store: st.Store, smtp_sink_factory: Callable[..., SmtpSink], tmp_path: Path
) -> None:
    sink = smtp_sink_factory(starttls=True, auth=True)
    config = sink_config(store, sink, tmp_path)
    sink.stop()  # the port is closed now; start() brings it back on the same port
    add_thread(store, "t1", SUBJECT)
    row = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    assert row is not None

    (down,) = dg.send_pending(store, config)
    assert not down.sent
    assert down.error == f"cannot reach 127.0.0.1:{sink.port} while connecting: Connection refused"
    (pending,) = digest_rows(store)
    assert (pending.status, pending.attempts) == ("pending", 1)

    sink.start()
    (up,) = dg.send_pending(store, config)
    assert up.sent and up.attempts == 2 and up.error is None
    sink.wait_for(1)
    assert dg.send_pending(store, config) == []
    settle(sink)
    assert len(sink.messages) == 1
    (sent,) = digest_rows(store)
    assert (sent.status, sent.attempts, sent.last_error) == ("sent", 2, None)
    assert sink.messages[0].message["Message-ID"] == row.message_id


def test_starttls_that_is_not_offered_is_an_error_not_a_fallback(
    store: st.Store, smtp_sink_factory: Callable[..., SmtpSink], tmp_path: Path
) -> None:
    sink = smtp_sink_factory()  # plain SMTP, no STARTTLS, no AUTH
    config = make_config(store, port=sink.port)
    result = digest_sent_once(store, config)
    assert not result.sent
    assert "does not offer STARTTLS; not sending in clear" in (result.error or "")
    settle(sink, 0.1)
    assert sink.messages == []


def test_untrusted_certificate_is_refused(
    store: st.Store, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config = make_config(store, port=smtp_sink.port)  # no ca_file: the system CAs only
    result = digest_sent_once(store, config)
    assert not result.sent
    assert (result.error or "").startswith(
        f"TLS certificate of 127.0.0.1:{smtp_sink.port} not accepted"
    )
    assert smtp_sink.messages == []


def test_several_pending_digests_go_oldest_first_in_one_session(
    store: st.Store, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config = sink_config(store, smtp_sink, tmp_path)
    smtp_sink.stop()
    add_thread(store, "t1", "First thread")
    dg.run_digest(store, config, now=T0 + timedelta(hours=1))  # built, not sent (down)
    add_thread(store, "t2", "Second thread", updated_at=T0 + timedelta(hours=2))
    smtp_sink.start()
    run = dg.run_digest(store, config, now=T0 + timedelta(hours=3))
    assert run.built is not None and run.ok
    assert [r.sent for r in run.results] == [True, True]
    received = smtp_sink.wait_for(2)
    texts = [parts(m)[1] for m in received]
    assert "First thread" in texts[0] and "Second thread" in texts[1]
    assert str(run).startswith(f"digest {run.built.id} built (1 thread, pending); 2 digests sent")


# --------------------------------------------------------------------------- implicit TLS, XOAUTH2

TOKEN = "ya29.test-access-token-7d1e"


class _Xoauth2Handler:
    """A handler that keeps messages and accepts XOAUTH2 the way Gmail answers it."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.auth_lines: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.original_content or envelope.content or b""))
        return "250 OK"

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        from aiosmtpd.smtp import AuthResult

        blob = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        self.auth_lines.append(blob)
        if blob == f"user=guard@work.example\x01auth=Bearer {TOKEN}\x01\x01":
            return AuthResult(success=True, auth_data="guard@work.example")
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"})
        await server.challenge_auth(error)  # the client must answer with an empty line
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def xoauth2_server(tls_cert: CertPair) -> Iterator[tuple[_Xoauth2Handler, int]]:
    """aiosmtpd with implicit TLS (SMTPS) and only XOAUTH2, on loopback."""
    from aiosmtpd.controller import Controller

    handler = _Xoauth2Handler()
    port = _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ssl_context=tls_cert.server_context(),
        auth_require_tls=False,  # the whole session is TLS; aiosmtpd cannot tell
        auth_required=True,
        auth_exclude_mechanism=["LOGIN", "PLAIN"],
        ready_timeout=5,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_xoauth2_over_implicit_tls(
    store: st.Store, xoauth2_server: tuple[_Xoauth2Handler, int], tls_cert: CertPair, tmp_path: Path
) -> None:
    handler, port = xoauth2_server
    token_file = secret_file(tmp_path, "token", TOKEN)
    config = make_config(
        store,
        tls="implicit",
        port=port,
        username="guard@work.example",
        oauth2_token_command=f"cat {token_file}",
        ca_file=tls_cert.ca_file,
    )
    result = digest_sent_once(store, config)
    assert result.sent and result.error is None
    assert len(handler.messages) == 1
    assert b"multipart/alternative" in handler.messages[0]

    # an expired token: the server's JSON challenge is answered and the failure is clean
    token_file.write_text("expired-token-0000\n")
    failed = digest_sent_once(store, config, "t2", "Second thread", hours=3)
    assert not failed.sent
    assert failed.error == (
        f"SMTP login as guard@work.example refused by 127.0.0.1:{port} (535 5.7.8); "
        "check the smtp password"
    )
    assert "expired-token" not in (failed.error or "")
    assert len(handler.messages) == 1


# --------------------------------------------------------------------------- read back over IMAP


def test_sent_digest_reads_back_from_a_real_mailbox(
    store: st.Store, smtp_sink: SmtpSink, mailbox: MailAccount, tmp_path: Path
) -> None:
    config = sink_config(store, smtp_sink, tmp_path)
    add_thread(store, "t1", SUBJECT)
    dg.run_digest(store, config, now=T0 + timedelta(hours=1))
    (received,) = smtp_sink.wait_for(1)
    mailbox.deliver(received.data, sender=received.mail_from)  # LMTP into Dovecot
    (raw,) = mailbox.messages().values()
    msg, text, html = parts(raw)
    assert msg["Subject"] == "inbox-guard: 1 risky thread (1 high) — 2026-11-20"
    assert SUBJECT_DEFANGED in text and SUBJECT_DEFANGED in html


# --------------------------------------------------------------------------- Chromium

PWN = "document.body.setAttribute('data-pwned','1')"
HOSTILE = [
    (
        f"Invoice <script>{PWN}</script> overdue",
        f'"><img src=x onerror="{PWN}"> pay at https://pay.evil.example/now',
        "billing@paypal.com.evil.example",
        "PayPal <b>Billing</b>\u202e",
    ),
    (
        'Contract \u202eexe.gpj\u202c <svg onload="' + PWN + '">',
        '<a href="javascript:' + PWN + '">open</a> \x1b[31mURGENT\x1b[0m www.evil.example',
        "bob@evil.example",
        "Bob <iframe src=https://evil.example>",
    ),
]


def _chromium(page: Path, work: Path) -> tuple[str, Path]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (tests/support/install-test-servers)",
            pytrace=False,
        )
    shot = work / "digest.png"
    profile = work / "profile"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--screenshot={shot}", "--window-size=1200,1600", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=work,
        env={**os.environ, "HOME": str(work)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, shot


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_chromium_harness_does_run_injected_scripts(tmp_path: Path) -> None:
    """The control: the same payload NOT escaped does mark the page, so the absence of the
    mark in the next test means the digest is inert, not that scripts never run here."""
    page = tmp_path / "control.html"
    page.write_text(f'<html><body><p>x</p><img src=x onerror="{PWN}"></body></html>')
    dom, _ = _chromium(page, tmp_path)
    assert 'data-pwned="1"' in dom


def test_digest_html_renders_in_chromium_and_stays_inert(store: st.Store, tmp_path: Path) -> None:
    config = make_config(store, port=2525)
    for i, (subject, evidence, sender, name) in enumerate(HOSTILE):
        add_thread(
            store, f"t{i}", subject, evidence=evidence, sender=sender, sender_name=name,
            category=("off_platform_payment", "phishing")[i],
        )  # fmt: skip
    rendered = dg.preview(store, config, now=T0 + timedelta(hours=1))
    page = tmp_path / "digest.html"
    page.write_text(rendered.html, encoding="utf-8")

    dom, shot = _chromium(page, tmp_path)

    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1200, 1600)
    assert shot.stat().st_size > 20_000
    assert len(set(pixels)) > 16  # text and colours, not a blank page

    assert "data-pwned" not in dom.replace("data-pwned','1')", "")  # only as escaped text
    assert 'data-pwned="' not in dom
    lower = dom.lower()
    for element in ("<script", "<img", "<svg", "<iframe", "<a ", "<form", "<link", "<object"):
        assert element not in lower, element
    assert "https://" not in dom and "http://" not in dom and "javascript:" not in lower
    assert "hxxps://pay[.]evil[.]example/now" in dom
    assert "billing@paypal[.]com[.]evil[.]example" in dom
    assert "www[.]evil[.]example" in dom
    for thread in rendered.content.threads:
        # the DOM serialiser escapes < > & again, as the template did
        shown = thread.subject.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert shown in dom
    assert "Invoice &lt;script&gt;" in dom
    assert "\u202e" not in dom and "\x1b" not in dom
