"""The feedback step of the scan cycle against an in-memory mailbox and a real SQLite
store: a crash at every command of a put-back or label removal, finished by the next scan
exactly once. The same against Dovecot and the Gmail emulator is in
tests/integration/test_feedback.py and tests/reliability/test_feedback_faults.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mail import harmless, risky_payment

from guard import store as st
from guard.mailbox import ServerSettings
from guard.mailbox.memory import MemoryMailbox, StoredMail
from guard.policy import RuleSet, load_rules
from guard.service.scan import ScanError, ScanSettings, scan
from guard.service.work import ScanSummary

ME = "freelancer@example.org"
SETTINGS = ScanSettings(
    server=ServerSettings(host="mail.example.org", port=993, tls="implicit", username=ME)
)
SAFE, REPORT = "Guard/Safe", "Guard/Report"
PAYMENT_FOLDER = "Guard/Off-platform payment"
PAYMENT_KEYWORD = "$GuardOffPlatformPayment"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "guard.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[st.Store]:
    opened = st.Store(f"sqlite:///{db}")
    yield opened
    opened.close()


def run(fake: MemoryMailbox, store: st.Store, rules: RuleSet) -> ScanSummary:
    return scan(SETTINGS, store, rules, connect=lambda _server: fake)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def user_moves(fake: MemoryMailbox, uid: int, target: str, copy: bool = False) -> None:
    """What a mail client does: the message leaves INBOX (unless copied) for ``target``."""
    mail = fake.folders["INBOX"].messages[uid]
    if not copy:
        del fake.folders["INBOX"].messages[uid]
    fake.folders[target].add(StoredMail(mail.raw, set(mail.flags), set(mail.gmail_labels)))


def labelled(fake: MemoryMailbox, store: st.Store, rules: RuleSet) -> tuple[int, bytes]:
    raw = risky_payment(subject="Payment", sender="dana@client.example")[0]
    uid = fake.deliver(raw, flags=["\\Seen", "$Work"])
    fake.deliver(harmless(subject="Dashboards", sender="other@client.example")[0])
    run(fake, store, rules)
    assert PAYMENT_KEYWORD in fake.flags()[uid] and len(fake.messages(PAYMENT_FOLDER)) == 1
    return uid, raw


def assert_settled(fake: MemoryMailbox, db: Path, raw: bytes) -> None:
    inbox = [r for r in fake.messages().values() if r == raw]
    assert len(inbox) == 1  # back exactly once
    uid = next(u for u, r in fake.messages().items() if r == raw)
    assert fake.flags()[uid] == {"\\Seen", "$Work"}  # its own flags, without the guard's
    assert fake.messages(SAFE) == {} and fake.messages(PAYMENT_FOLDER) == {}
    assert rows(db, "SELECT kind FROM feedback") == [("safe",)]
    assert rows(db, "SELECT count(*) FROM feedback_move WHERE NOT done") == [(0,)]
    assert (uid,) in rows(db, "SELECT uid FROM message WHERE folder = 'INBOX'")


@pytest.mark.parametrize(
    ("command", "after"),
    [
        # reads: the session drops before the answer
        ("FETCH", False),
        ("SEARCH", False),
        # writes: before they take effect, or after (the server did it; the reply is lost)
        *((write, after) for write in ("MOVE", "UNSTORE", "EXPUNGE") for after in (False, True)),
    ],
)
def test_a_put_back_cut_at_any_command_is_finished_by_the_next_scan_once(
    db: Path, store: st.Store, rules: RuleSet, command: str, after: bool
) -> None:
    fake = MemoryMailbox()
    uid, raw = labelled(fake, store, rules)
    user_moves(fake, uid, SAFE)
    fake.fail_at(command, after=after)
    with pytest.raises(ScanError, match="lost"):  # every one of them is on the way
        run(fake, store, rules)
    run(fake, store, rules)
    assert_settled(fake, db, raw)
    run(fake, store, rules)  # and a further scan changes nothing
    assert_settled(fake, db, raw)


def test_a_copy_is_removed_from_the_feedback_folder_and_the_original_stays(
    db: Path, store: st.Store, rules: RuleSet
) -> None:
    fake = MemoryMailbox()
    uid, raw = labelled(fake, store, rules)
    user_moves(fake, uid, SAFE, copy=True)
    fake.fail_at("EXPUNGE", after=True)
    with pytest.raises(ScanError):
        run(fake, store, rules)
    run(fake, store, rules)
    assert_settled(fake, db, raw)
    assert raw == fake.messages()[uid]  # the original never moved
    assert rows(db, "SELECT via FROM feedback") == [("copy",)]


def test_a_message_the_guard_never_saw_goes_to_the_inbox_and_is_judged_with_it(
    db: Path, store: st.Store, rules: RuleSet
) -> None:
    fake = MemoryMailbox()
    run(fake, store, rules)  # creates the feedback folders
    raw = risky_payment(subject="Deal", sender="erin@client.example")[0]
    fake.folders[REPORT].add(StoredMail(raw))
    run(fake, store, rules)
    assert list(fake.messages().values()) == [raw] and fake.messages(REPORT) == {}
    assert rows(db, "SELECT kind, thread_id IS NOT NULL, applied FROM feedback") == [
        ("report", 1, 1)
    ]
    uid = next(iter(fake.messages()))
    assert "$GuardReported" in fake.flags()[uid]
    assert rows(db, "SELECT reported FROM thread") == [(1,)]


def test_forgetting_a_safe_mark_brings_the_labels_back(
    db: Path, store: st.Store, rules: RuleSet
) -> None:
    fake = MemoryMailbox()
    uid, raw = labelled(fake, store, rules)
    user_moves(fake, uid, SAFE)
    run(fake, store, rules)
    assert_settled(fake, db, raw)
    with store.session() as session:
        (row,) = st.feedback_rows(session)
        assert st.forget_feedback(session, row.id or 0) is not None
        assert st.feedback_rows(session) == []
    run(fake, store, rules)
    back = next(u for u, r in fake.messages().items() if r == raw)
    assert PAYMENT_KEYWORD in fake.flags()[back]
    assert len(fake.messages(PAYMENT_FOLDER)) == 1


def test_a_copy_is_recognised_after_the_inbox_was_renumbered(
    db: Path, store: st.Store, rules: RuleSet
) -> None:
    """The original's recorded UID belongs to an old UIDVALIDITY: the copy in Guard/Safe
    is still recognised by its bytes, and INBOX keeps one message."""
    fake = MemoryMailbox()
    uid, raw = labelled(fake, store, rules)
    user_moves(fake, uid, SAFE, copy=True)
    fake.renumber("INBOX")
    run(fake, store, rules)
    assert [r for r in fake.messages().values() if r == raw] == [raw]
    assert fake.messages(SAFE) == {}
    assert rows(db, "SELECT via FROM feedback") == [("copy",)]
