"""Self-tests of the real-server fixtures (tests/conftest.py, tests/support/servers.py).

Each test checks one promise the integration tests rely on, against the real server.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Callable

import pytest
import sqlalchemy
from imapclient import IMAPClient
from support.servers import CertPair, Dovecot, Hoodiecrow, MailAccount, Postgres, SmtpSink

FIRST = (
    b"From: Client <client@example.com>\r\n"
    b"To: Me <me@example.org>\r\n"
    b"Subject: Project kickoff\r\n"
    b"Message-ID: <first@example.com>\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"Can we talk on WhatsApp instead?\r\n"
)
REPLY = (
    b"From: Me <me@example.org>\r\n"
    b"To: Client <client@example.com>\r\n"
    b"Subject: Re: Project kickoff\r\n"
    b"Message-ID: <reply@example.org>\r\n"
    b"In-Reply-To: <first@example.com>\r\n"
    b"References: <first@example.com>\r\n"
    b"\r\n"
    b"Let's keep it on the platform.\r\n"
)
OTHER = b"Subject: Unrelated\r\nMessage-ID: <other@example.net>\r\n\r\nHello.\r\n"


def numbered(count: int) -> list[bytes]:
    return [
        b"Subject: bulk %d\r\nMessage-ID: <bulk%d@example.com>\r\n\r\nx\r\n" % (i, i)
        for i in range(count)
    ]


# -- Dovecot ----------------------------------------------------------------------------------


def test_dovecot_login_over_starttls_and_implicit_tls_with_the_ca_file(
    mailbox: MailAccount,
) -> None:
    context = ssl.create_default_context(cafile=str(mailbox.ca_file))

    plain = IMAPClient(mailbox.host, mailbox.port, ssl=False, timeout=10)
    assert plain.welcome.startswith(b"* OK")
    plain.starttls(context)
    plain.login(mailbox.user, mailbox.password)
    assert isinstance(plain.socket(), ssl.SSLSocket)
    plain.logout()

    implicit = IMAPClient(mailbox.host, mailbox.tls_port, ssl=True, ssl_context=context, timeout=10)
    implicit.login(mailbox.user, mailbox.password)
    assert b"CONDSTORE" in implicit.capabilities()
    implicit.logout()

    untrusting = IMAPClient(mailbox.host, mailbox.port, ssl=False, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.starttls(ssl.create_default_context())


def test_dovecot_save_is_seen_with_its_flags_by_an_independent_connection(
    mailbox: MailAccount,
) -> None:
    first = mailbox.save(FIRST, flags=["\\Seen", "$Phishing"])
    second = mailbox.save(OTHER)
    scam = mailbox.save(REPLY, mailbox="Guard/Scam", flags=["$Scam"])

    assert (first, second, scam) == (1, 2, 1)
    assert mailbox.flags() == {1: {"\\Seen", "$Phishing"}, 2: set()}
    assert mailbox.flags("Guard/Scam") == {1: {"$Scam"}}
    assert mailbox.messages()[1] == FIRST
    with mailbox.session() as client:
        folders = {name: (flags, sep) for flags, sep, name in client.list_folders()}
        client.select_folder("INBOX")
        assert b"\\*" in client.select_folder("INBOX")[b"PERMANENTFLAGS"]
    assert folders["Guard/Scam"][1] == b"/"
    assert b"\\Sent" in folders["Sent"][0]
    assert {b"\\Drafts", b"\\Junk", b"\\Trash"} <= {
        f for flags, _ in folders.values() for f in flags
    }


def test_dovecot_users_are_fresh_and_separate(dovecot: Dovecot) -> None:
    one, two = dovecot.account("same"), dovecot.account("same")
    assert one.user != two.user
    one.save(FIRST)
    assert two.flags() == {}


def test_dovecot_append_many_uses_one_connection(mailbox: MailAccount) -> None:
    uids = mailbox.append_many(numbered(300), mailbox="Archive", flags=["\\Seen"])

    assert uids == list(range(1, 301))
    flags = mailbox.flags("Archive")
    assert len(flags) == 300
    assert all(value == {"\\Seen"} for value in flags.values())


@pytest.mark.parametrize("folder", ["INBOX", "Guard/Scam"])
def test_dovecot_recreate_mailbox_changes_uidvalidity(mailbox: MailAccount, folder: str) -> None:
    mailbox.save(FIRST, mailbox=folder)
    mailbox.save(OTHER, mailbox=folder)
    mailbox.save(REPLY, mailbox=folder, flags=["\\Flagged"])
    with mailbox.session() as client:
        client.select_folder(folder)
        client.delete_messages([1])
        client.expunge()
    before = mailbox.uidvalidity(folder)

    after = mailbox.recreate_mailbox(folder)

    assert after != before
    assert mailbox.uidvalidity(folder) == after
    assert mailbox.flags(folder) == {1: set(), 2: {"\\Flagged"}}
    assert mailbox.messages(folder) == {1: OTHER, 2: REPLY}

    assert mailbox.recreate_mailbox(folder, [FIRST]) != after
    assert mailbox.messages(folder) == {1: FIRST}


def test_dovecot_restart_on_the_same_ports_keeps_the_mail(
    dovecot: Dovecot, mailbox: MailAccount
) -> None:
    uid = mailbox.save(FIRST, flags=["$Phishing"])
    ports = (dovecot.port, dovecot.tls_port, dovecot.lmtp_port)
    try:
        dovecot.stop()
        assert not dovecot.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((dovecot.host, dovecot.port), timeout=2)
    finally:
        dovecot.start()

    assert (dovecot.port, dovecot.tls_port, dovecot.lmtp_port) == ports
    assert mailbox.flags() == {uid: {"$Phishing"}}


def test_dovecot_lmtp_delivery_lands_in_the_inbox(mailbox: MailAccount) -> None:
    mailbox.deliver(FIRST)

    [raw] = mailbox.messages().values()
    assert raw.endswith(FIRST)
    assert f"<{mailbox.user}>" in mailbox.log_text()


# -- Hoodiecrow (Gmail) -----------------------------------------------------------------------


def test_gmail_advertises_x_gm_ext_1_and_gmail_folders(gmail: Hoodiecrow) -> None:
    with gmail.session() as client:
        assert b"X-GM-EXT-1" in client.capabilities()
        folders = {name: flags for flags, _sep, name in client.list_folders()}
    assert b"\\Sent" in folders["[Gmail]/Sent Mail"]
    assert b"\\All" in folders["[Gmail]/All Mail"]


def test_gmail_fetches_thread_ids_and_labels(gmail: Hoodiecrow) -> None:
    first = gmail.append(FIRST)
    other = gmail.append(OTHER)
    reply = gmail.append(REPLY, mailbox="[Gmail]/Sent Mail")

    with gmail.session() as client:
        client.select_folder("INBOX", readonly=True)
        inbox = client.fetch([first, other], ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"])
        client.select_folder("[Gmail]/Sent Mail", readonly=True)
        sent = client.fetch([reply], ["X-GM-THRID", "X-GM-LABELS"])

    assert inbox[first][b"X-GM-THRID"] == inbox[first][b"X-GM-MSGID"]
    assert inbox[other][b"X-GM-THRID"] == inbox[other][b"X-GM-MSGID"]
    assert sent[reply][b"X-GM-THRID"] == inbox[first][b"X-GM-THRID"]
    assert inbox[first][b"X-GM-LABELS"] == (b"\\Inbox",)
    assert sent[reply][b"X-GM-LABELS"] == (b"\\Sent",)
    assert gmail.thread_ids("[Gmail]/Sent Mail") == {reply: inbox[first][b"X-GM-THRID"]}


def test_gmail_labels_round_trip_and_search(gmail: Hoodiecrow) -> None:
    first = gmail.append(FIRST)
    other = gmail.append(OTHER)

    with gmail.session() as client:
        client.select_folder("INBOX")
        client.add_gmail_labels([first], ["Guard/Scam", "Needs review"])
        assert set(client.get_gmail_labels([first])[first]) == {
            "\\Inbox",
            "Guard/Scam",
            "Needs review",
        }
        assert client.search(["X-GM-LABELS", "Guard/Scam"]) == [first]
        client.remove_gmail_labels([first], ["Needs review"])

    assert gmail.labels() == {first: {"\\Inbox", "Guard/Scam"}, other: {"\\Inbox"}}


def test_gmail_with_implicit_tls(tls_cert: CertPair) -> None:
    with Hoodiecrow(tls=True, cert=tls_cert) as server:
        context = ssl.create_default_context(cafile=str(tls_cert.ca_file))
        client = IMAPClient(server.host, server.port, ssl=True, ssl_context=context, timeout=10)
        client.login(server.username, server.password)
        client.logout()


# -- PostgreSQL -------------------------------------------------------------------------------


def test_postgres_accepts_sqlalchemy(postgres: Postgres) -> None:
    engine = sqlalchemy.create_engine(postgres.url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    finally:
        engine.dispose()


def test_postgres_url_is_a_database_of_its_own(postgres_url: str, postgres: Postgres) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("create table findings (id int)"))
            name = connection.execute(sqlalchemy.text("select current_database()")).scalar()
    finally:
        engine.dispose()
    assert postgres_url.endswith(f"/{name}")
    assert "findings" not in postgres.psql("select tablename from pg_tables")


# -- SMTP sink --------------------------------------------------------------------------------


def test_smtp_sink_receives_over_starttls_with_auth(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        client.starttls(context=smtp_sink.client_context())
        client.login(smtp_sink.username, smtp_sink.password)
        client.sendmail("guard@example.org", ["me@example.org"], FIRST)

    [message] = smtp_sink.wait_for(1)
    assert message.data == FIRST
    assert message.rcpt_tos == ("me@example.org",)
    assert message.auth_user == smtp_sink.username
    assert message.tls
    assert message.message["Subject"] == "Project kickoff"


def test_smtp_sink_refuses_a_wrong_password(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        client.starttls(context=smtp_sink.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(smtp_sink.username, "wrong")
    assert refused.value.smtp_code == 535
    assert smtp_sink.messages == []


def test_smtp_sink_can_require_tls_and_auth(
    smtp_sink_factory: Callable[..., SmtpSink],
) -> None:
    strict = smtp_sink_factory(require_starttls=True, require_auth=True)
    with smtplib.SMTP(strict.host, strict.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("guard@example.org", ["me@example.org"], FIRST)
        assert refused.value.smtp_code == 530

    with smtplib.SMTP(strict.host, strict.port, timeout=10) as client:
        client.starttls(context=strict.client_context())
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("guard@example.org", ["me@example.org"], FIRST)
        assert refused.value.smtp_code == 530
    assert strict.messages == []
