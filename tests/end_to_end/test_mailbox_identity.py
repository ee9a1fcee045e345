"""An account pointed at another mailbox (``imap.username`` or ``imap.host`` changed under
the same account name) is a different mailbox, not a UIDVALIDITY change of the same one.

Two Dovecot users are two mailboxes; the real ``inbox-guard scan`` runs in a subprocess
on SQLite and PostgreSQL; the store is read back with SQL.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.cli import run_cli
from support.configs import write_config
from support.db import as_version, rows
from support.servers import Dovecot, MailAccount

from guard import store as st


def message(n: int, subject: str, body: str) -> bytes:
    return (
        f"From: Client {n} <client{n}@client.example>\r\n"
        "To: me@work.example\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <m{n}@client.example>\r\n"
        "Date: Tue, 05 Mar 2024 10:12:00 +0000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


RISKY = message(
    1,
    "About the project",
    "Let's skip the platform fees: pay me directly via PayPal to my personal account, "
    "and we'll continue on WhatsApp +1 555 0100.",
)
SHARED = message(2, "Staging review", "The staging deploy looks good, see you Thursday.")
ONLY_B = message(3, "Logo files", "Here are the logo files you asked for.")


PLAIN = {"tls": "none", "ca_file": None, "timeout": 10}  # IMAP without TLS on loopback


def scan(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("scan", "--config", str(config), "--format", "json", timeout=180, check=True)


def messages_of(url: str, account: str) -> set[tuple[str, int, str]]:
    found = rows(
        url,
        "SELECT folder, uidvalidity, subject FROM message WHERE account = :a",
        a=account,
    )
    return {(str(f), int(str(u)), str(s)) for f, u, s in found}


def test_another_user_under_the_same_account_is_another_mailbox(
    dovecot: Dovecot, tmp_path: Path, store_url: str
) -> None:
    url = store_url
    a, b = dovecot.new_user("first"), dovecot.new_user("second")
    dovecot.save(a, RISKY)
    dovecot.save(a, SHARED)
    dovecot.save(b, SHARED)  # the same bytes in both: must not be "relocated" from A to B
    dovecot.save(b, ONLY_B)
    uv_a, uv_b = dovecot.uidvalidity(a), dovecot.uidvalidity(b)
    mailbox_a, mailbox_b = f"{a}@127.0.0.1", f"{b}@127.0.0.1"

    config = write_config(tmp_path, MailAccount(dovecot, a), url, imap=PLAIN)
    first = scan(config)
    assert json.loads(first.stdout)["new_messages"] == 2
    history_a = messages_of(url, "default")
    assert {s for _f, _u, s in history_a} == {"About the project", "Staging review"}
    assert rows(url, "SELECT DISTINCT mailbox FROM folder_state") == [(mailbox_a,)]

    # the same account name, another user: a reload or a restart with the new file
    config.write_text(config.read_text().replace(json.dumps(a), json.dumps(b)))
    second = scan(config)
    summary = json.loads(second.stdout)
    assert summary["new_messages"] == 2  # both of B's messages are read and judged
    assert not any(f["uidvalidity_reset"] for f in summary["folders"].values())
    assert "UIDVALIDITY changed" not in second.stderr
    said = [x for x in second.stderr.splitlines() if "now points at another mailbox" in x]
    assert len(said) == 1, second.stderr
    archive = st.mailbox_archive("default", mailbox_a)
    assert f"({mailbox_b}, was {mailbox_a})" in said[0] and archive in said[0]

    assert messages_of(url, "default") == {
        ("INBOX", uv_b, "Staging review"),
        ("INBOX", uv_b, "Logo files"),
    }
    assert messages_of(url, archive) == history_a  # A's history untouched, kept apart
    assert rows(url, "SELECT DISTINCT mailbox FROM folder_state WHERE account = 'default'") == [
        (mailbox_b,)
    ]
    # threads of the two mailboxes are not merged: B's copy of the shared message has a
    # thread of B's own account
    threads_b = rows(url, "SELECT thread_id FROM thread WHERE account = 'default'")
    threads_a = rows(url, "SELECT thread_id FROM thread WHERE account = :a", a=archive)
    assert len(threads_b) == 2 and len(threads_a) == 2
    risky_b = rows(url, "SELECT risk FROM thread WHERE account = 'default' AND risk <> 'none'")
    assert risky_b == []  # A's risky thread is not reported for B

    # and back: A's own history returns, nothing of A is read or judged again
    config.write_text(config.read_text().replace(json.dumps(b), json.dumps(a)))
    third = scan(config)
    assert json.loads(third.stdout)["new_messages"] == 0
    assert messages_of(url, "default") == history_a
    assert {u for _f, u, _s in history_a} == {uv_a}
    assert messages_of(url, st.mailbox_archive("default", mailbox_b)) == {
        ("INBOX", uv_b, "Staging review"),
        ("INBOX", uv_b, "Logo files"),
    }
    assert sum("now points at another mailbox" in x for x in third.stderr.splitlines()) == 1


def test_another_host_for_the_same_user_is_another_mailbox(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    """Both "localhost" and "127.0.0.1" reach the same Dovecot, but the guard cannot know that:
    a changed host is a changed mailbox (the UIDs are not trusted across it)."""
    url = f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    user = dovecot.new_user("host")
    dovecot.save(user, SHARED)
    config = write_config(tmp_path, MailAccount(dovecot, user), url, imap=PLAIN)
    scan(config)
    config.write_text(config.read_text().replace('"127.0.0.1"', '"localhost"'))
    proc = scan(config)
    assert "now points at another mailbox" in proc.stderr
    assert json.loads(proc.stdout)["new_messages"] == 1
    old = st.mailbox_archive("default", f"{user}@127.0.0.1")
    assert len(messages_of(url, old)) == 1


def test_a_version_2_store_gains_the_mailbox_and_keeps_its_position(
    dovecot: Dovecot, tmp_path: Path, store_url: str
) -> None:
    """A store written before v3 has folder state without a mailbox: it is taken to be the
    configured mailbox's (no fresh start, nothing read twice), and recorded from then on."""
    url = store_url
    user = dovecot.new_user("legacy")
    dovecot.save(user, SHARED)
    config = write_config(tmp_path, MailAccount(dovecot, user), url, imap=PLAIN)
    scan(config)
    as_version(url, 2)  # as v2 wrote it: no mailbox column, none of v3's changes since
    dovecot.save(user, ONLY_B)

    proc = scan(config)
    assert json.loads(proc.stdout)["new_messages"] == 1  # only the new one
    assert "now points at another mailbox" not in proc.stderr
    assert rows(url, "SELECT MAX(version) FROM schema_version") == [(st.SCHEMA_VERSION,)]
    assert rows(url, "SELECT mailbox FROM folder_state WHERE folder = 'INBOX'") == [
        (f"{user}@127.0.0.1",)
    ]
    assert len(messages_of(url, "default")) == 2
