"""The scan cycle's logic against an in-memory mailbox (guard.mailbox.memory) and a real
SQLite store: the order of its steps, every crash point, thread propagation across
folders, dry runs, stops, UIDVALIDITY changes and the label backends. Each test runs in
milliseconds; the same behaviour against Dovecot and the Gmail emulator is the
integration tier (tests/integration/test_scan.py, test_servers.py).

What the mailbox holds is read from the fake's own folders, and the store by reading the
SQLite file directly, never through the scanner.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mail import harmless, make, risky_payment

from guard import store as st
from guard.mailbox import ServerSettings
from guard.mailbox.memory import WRITES, Command, MemoryMailbox
from guard.policy import RuleSet, load_rules
from guard.service.scan import ScanControl, ScanError, ScanSettings, scan
from guard.service.work import ScanSummary

ME = "freelancer@example.org"
PAYMENT_KEYWORD = "$GuardOffPlatformPayment"
PAYMENT_FOLDER = "Guard/Off-platform payment"
FEEDBACK = ("Guard/Safe", "Guard/Report")  # created by every real scan, for the user
SETTINGS = ScanSettings(
    server=ServerSettings(host="mail.example.org", port=993, tls="implicit", username=ME)
)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "guard.sqlite3"


@pytest.fixture
def fake() -> MemoryMailbox:
    return MemoryMailbox()


@pytest.fixture
def store(db: Path) -> Iterator[st.Store]:
    opened = st.Store(f"sqlite:///{db}")
    yield opened
    opened.close()


def run(fake: MemoryMailbox, store: st.Store, rules: RuleSet, **options: Any) -> ScanSummary:
    settings = options.pop("settings", SETTINGS)
    return scan(settings, store, rules, connect=lambda _server: fake, **options)


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, args))


def messages(db: Path) -> list[tuple[str, int, str, int]]:
    """(folder, uid, labels, label_pending) of every recorded message."""
    return [
        (f, u, labels, pending)
        for f, u, labels, pending in rows(
            db, "SELECT folder, uid, labels, label_pending FROM message ORDER BY folder, uid"
        )
    ]


def last_uid(db: Path, folder: str = "INBOX") -> int | None:
    found = rows(db, "SELECT last_uid FROM folder_state WHERE folder = ?", folder)
    return found[0][0] if found else None


def risky_and_harmless(fake: MemoryMailbox) -> tuple[int, int]:
    risky = fake.deliver(risky_payment(subject="Payment")[0])
    calm = fake.deliver(harmless(subject="Dashboards", sender="other@client.example")[0])
    return risky, calm


# --------------------------------------------------------------------------- ordering


def test_messages_are_committed_before_labels_and_the_folder_advances_last(
    db: Path, store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    risky, calm = risky_and_harmless(fake)
    seen: list[tuple[int, int | None]] = []

    def at_label_write(_command: Command) -> None:
        seen.append((len(messages(db)), last_uid(db)))

    fake.before("STORE", at_label_write)
    fake.before("COPY", at_label_write)
    summary = run(fake, store, rules)

    # every label write saw both messages committed, and the folder not yet advanced
    assert len(seen) == 4  # two labels (category, level), each a keyword and a copy
    assert set(seen) == {(2, None)}
    assert last_uid(db) == calm
    assert PAYMENT_KEYWORD in fake.flags()[risky]
    assert not any(f.startswith("$Guard") for f in fake.flags()[calm])
    assert len(fake.messages(PAYMENT_FOLDER)) == 1
    assert all(pending == 0 for *_rest, pending in messages(db))
    assert (summary.new_messages, summary.risky, summary.labelled) == (2, 1, 1)
    assert summary.label_mode == "keywords+folders"
    # the session is opened once and closed at the end
    assert fake.opened == 1 and not fake.is_open


def test_an_unchanged_folder_is_not_selected_again(
    store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    risky_and_harmless(fake)
    run(fake, store, rules)
    fake.log.clear()
    summary = run(fake, store, rules)
    assert summary.folders["INBOX"].unchanged
    assert "SELECT" not in fake.names() and "FETCH" not in fake.names()
    assert not set(fake.names()) & WRITES


# --------------------------------------------------------------------------- crash points


@pytest.mark.parametrize(
    ("command", "after"),
    [
        ("FETCH", False),
        ("STORE", False),
        ("STORE", True),
        ("CREATE", False),
        ("COPY", False),
        ("COPY", True),  # the copy was made, the reply lost: it must not be made twice
    ],
)
def test_a_scan_cut_at_any_command_is_finished_by_the_next_one_exactly_once(
    db: Path, store: st.Store, rules: RuleSet, command: str, after: bool, fake: MemoryMailbox
) -> None:
    risky, calm = risky_and_harmless(fake)
    fake.fail_at(command, after=after)
    with pytest.raises(ScanError) as failed:
        run(fake, store, rules)
    assert failed.value.kind == "network"
    assert last_uid(db) is None  # the folder did not advance past unlabelled mail

    run(fake, store, rules)
    assert [(f, u) for f, u, *_rest in messages(db)] == [("INBOX", risky), ("INBOX", calm)]
    assert PAYMENT_KEYWORD in fake.flags()[risky]
    assert len(fake.messages(PAYMENT_FOLDER)) == 1
    assert last_uid(db) == calm
    assert all(pending == 0 for *_rest, pending in messages(db))
    label_folders = [f for f in fake.folders if f.startswith("Guard/") and f not in FEEDBACK]
    assert len(label_folders) == 2  # the category's and the level's
    assert all(len(fake.messages(f)) == 1 for f in label_folders)
    assert rows(db, "SELECT DISTINCT done FROM label_copy") == [(1,)]


def test_a_stop_keeps_what_was_committed_and_the_next_scan_reads_the_rest(
    db: Path, store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    uids = [fake.deliver(harmless(i, sender=f"c{i}@client.example")[0]) for i in range(3)]
    stop = False

    def second_batch(command: Command) -> None:
        nonlocal stop
        if command.value == "RFC822.SIZE" and command.uids == (uids[1],):
            stop = True

    fake.before("FETCH", second_batch)
    settings = ScanSettings(server=SETTINGS.server, batch_size=1)
    summary = run(fake, store, rules, settings=settings, control=ScanControl(lambda: stop))
    assert summary.stopped
    assert [u for _f, u, *_rest in messages(db)] == uids[:1]
    assert last_uid(db) is None

    stop = False
    summary = run(fake, store, rules, settings=settings)
    assert not summary.stopped and summary.new_messages == 2
    assert [u for _f, u, *_rest in messages(db)] == uids
    assert last_uid(db) == uids[-1]


# --------------------------------------------------------------------------- threads


def _conversation(fake: MemoryMailbox) -> tuple[int, int]:
    """The user's own message in Sent, and the client's harmless first message in INBOX."""
    sent_raw, sent_id = make(sender=ME, to="client@example.com", subject="Logo project")
    sent = fake.deliver(sent_raw, "Sent")
    first = fake.deliver(
        harmless(subject="Re: Logo project", reply_to_msg=sent_id, msgid="<first@client.example>")[
            0
        ]
    )
    return sent, first


def test_a_risky_reply_labels_the_earlier_messages_of_its_thread_in_every_folder(
    db: Path, store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    sent, first = _conversation(fake)
    run(fake, store, rules)
    assert not any(f.startswith("$Guard") for f in fake.flags("Sent")[sent])
    assert not any(f.startswith("$Guard") for f in fake.flags()[first])

    reply = fake.deliver(
        risky_payment(subject="Re: Logo project", reply_to_msg="<first@client.example>")[0]
    )
    # only INBOX is scanned: the Sent message is labelled as a label owed to another folder
    run(fake, store, rules, only_folder="INBOX")
    assert PAYMENT_KEYWORD in fake.flags()[reply]
    assert PAYMENT_KEYWORD in fake.flags()[first]
    assert PAYMENT_KEYWORD in fake.flags("Sent")[sent]
    assert len(fake.messages(PAYMENT_FOLDER)) == 3
    assert all(pending == 0 for *_rest, pending in messages(db))


def test_an_unrelated_message_is_not_labelled_with_a_risky_thread(
    store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    _sent, first = _conversation(fake)
    other = fake.deliver(harmless(subject="Invoice", sender="else@elsewhere.example")[0])
    fake.deliver(
        risky_payment(subject="Re: Logo project", reply_to_msg="<first@client.example>")[0]
    )
    run(fake, store, rules)
    assert PAYMENT_KEYWORD in fake.flags()[first]
    assert not any(f.startswith("$Guard") for f in fake.flags()[other])


# --------------------------------------------------------------------------- dry run


def test_a_dry_run_writes_nothing_and_plans_what_a_real_scan_then_writes(
    db: Path, store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    risky, calm = risky_and_harmless(fake)
    summary = run(fake, store, rules, dry_run=True)

    assert not set(fake.names()) & WRITES
    assert "SELECT" not in fake.names()  # every folder EXAMINEd
    assert messages(db) == [] and rows(db, "SELECT * FROM folder_state") == []
    assert rows(db, "SELECT * FROM scan_run") == []
    assert [p.uid for p in summary.planned] == [risky]
    planned = set(summary.planned[0].labels)
    assert f"keyword:{PAYMENT_KEYWORD}" in planned
    assert f"folder:{PAYMENT_FOLDER}" in planned
    assert summary.to_dict()["would_label"][0]["uid"] == risky

    run(fake, store, rules)
    written = {f"{u}": set(labels.split("\n")) - {""} for _f, u, labels, _p in messages(db)}
    assert written == {str(risky): planned, str(calm): set()}


# --------------------------------------------------------------------------- UIDVALIDITY


def test_a_new_uidvalidity_rematches_messages_and_keeps_label_folder_copies(
    db: Path, store: st.Store, rules: RuleSet, fake: MemoryMailbox
) -> None:
    risky_and_harmless(fake)
    run(fake, store, rules)
    new = fake.renumber("INBOX")
    for mail in fake.folders["INBOX"].messages.values():
        mail.flags.clear()  # the rebuilt folder lost its keywords
    fake.log.clear()

    summary = run(fake, store, rules)
    assert summary.folders["INBOX"].uidvalidity_reset
    assert summary.new_messages == 0  # matched by content, not counted twice
    assert len(messages(db)) == 2
    assert rows(db, "SELECT DISTINCT uidvalidity FROM message") == [(new,)]
    assert PAYMENT_KEYWORD in fake.flags()[1]  # keywords belong to the old copy: written again
    assert "COPY" not in fake.names()  # the label-folder copy is a message of its own: kept
    assert len(fake.messages(PAYMENT_FOLDER)) == 1


# --------------------------------------------------------------------------- label backends


@pytest.mark.parametrize(
    ("fake", "mode", "writes"),
    [
        (MemoryMailbox(), "keywords+folders", {"STORE", "CREATE", "COPY"}),
        (MemoryMailbox(keywords=False), "folders", {"CREATE", "COPY"}),
        # CREATE: the Guard/Safe and Guard/Report labels, for the user to use
        (MemoryMailbox(gmail=True), "gmail", {"X-GM-LABELS", "CREATE"}),
    ],
    ids=["keywords+folders", "folders", "gmail"],
)
def test_the_label_backends_follow_the_server(
    db: Path, store: st.Store, rules: RuleSet, fake: MemoryMailbox, mode: str, writes: set[str]
) -> None:
    risky, _calm = risky_and_harmless(fake)
    summary = run(fake, store, rules)
    assert summary.label_mode == mode
    assert set(fake.names()) & WRITES == writes
    labels = rows(db, "SELECT labels FROM message WHERE uid = ?", risky)[0][0].split("\n")
    if mode == "gmail":
        assert PAYMENT_FOLDER in fake.gmail_labels()[risky]
        assert f"gmail:{PAYMENT_FOLDER}" in labels
    else:
        assert f"folder:{PAYMENT_FOLDER}" in labels
        assert len(fake.messages(PAYMENT_FOLDER)) == 1
    assert (f"keyword:{PAYMENT_KEYWORD}" in labels) == (mode == "keywords+folders")
