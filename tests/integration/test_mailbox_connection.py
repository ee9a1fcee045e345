"""guard.mailbox's own API against a real Dovecot: connection settings from the
configuration (no scan involved) and waiting for new mail in IDLE."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support.configs import write_config
from support.mail import harmless
from support.servers import MailAccount

from guard.config import ConfigError, load_config
from guard.mailbox import Connection, ImapError, server_settings


def _connect(tmp_path: Path, mailbox: MailAccount) -> Connection:
    config = load_config(write_config(tmp_path, mailbox))
    return Connection(server_settings(config, "default")).open()


def test_server_settings_come_from_the_account_and_log_in(
    tmp_path: Path, mailbox: MailAccount
) -> None:
    config = load_config(write_config(tmp_path, mailbox))
    server = server_settings(config)
    assert (server.host, server.port, server.tls) == ("127.0.0.1", mailbox.port, "starttls")
    assert server.username == mailbox.user
    assert server.mailbox == f"{mailbox.user}@127.0.0.1"
    assert server.password is not None and server.oauth2_token is None
    with Connection(server) as conn:
        assert conn.status("INBOX").uidvalidity == mailbox.uidvalidity()
    with pytest.raises(ConfigError, match="no account named 'other'"):
        server_settings(config, "other")


def _idle_while(conn: Connection, action: Callable[[], object]) -> bool:
    """``idle_wait()`` on INBOX while ``action`` runs in another thread 0.3 s in."""
    conn.select("INBOX", readonly=True)
    timer = threading.Timer(0.3, action)
    timer.start()
    try:
        return conn.idle_wait(renew=60, poll=0.1)
    finally:
        timer.join()


def test_idle_wait_returns_true_when_mail_arrives(tmp_path: Path, mailbox: MailAccount) -> None:
    with _connect(tmp_path, mailbox) as conn:
        assert _idle_while(conn, lambda: mailbox.save(harmless()[0])) is True
        # DONE was answered: the connection is still usable
        assert conn.status("INBOX").messages == 1


def test_idle_wait_returns_true_when_a_message_is_moved_away(
    tmp_path: Path, mailbox: MailAccount
) -> None:
    """Dragging a message out of INBOX (into Guard/Safe, say) wakes the watcher too."""
    uid = mailbox.save(harmless()[0])
    mailbox.create_mailbox("Guard/Safe")

    def move() -> None:
        with mailbox.session() as client:
            client.select_folder("INBOX")
            client.move([uid], "Guard/Safe")

    with _connect(tmp_path, mailbox) as conn:
        assert _idle_while(conn, move) is True


def test_idle_wait_returns_false_when_stopped_or_renewed(
    tmp_path: Path, mailbox: MailAccount
) -> None:
    with _connect(tmp_path, mailbox) as conn:
        conn.select("INBOX", readonly=True)
        assert conn.idle_wait(renew=60, stop=lambda: True) is False
        assert conn.idle_wait(renew=0.3, poll=0.1) is False
        assert conn.status("INBOX").messages == 0


def test_idle_wait_raises_imap_error_when_the_connection_is_cut(
    tmp_path: Path, mailbox: MailAccount
) -> None:
    with _connect(tmp_path, mailbox) as conn, pytest.raises(ImapError) as raised:
        _idle_while(conn, conn.cut)
    assert raised.value.kind in ("network", "timeout")
