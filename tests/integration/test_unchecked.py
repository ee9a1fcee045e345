"""Messages the guard could not read whole, and the memory a scan holds, on real servers.

A message bigger than ``imap.max_message_bytes`` is fetched only in part: that is an
"unchecked" message today, whatever the parser does. It must carry ``Guard/Unchecked``
(its own label, in every label mode, even at risk none), keep the unchecked finding in
the store, and get a line in the digest. Batches are bounded in bytes: the originals a
scan holds at once are counted (every ``Fetched`` the IMAP layer hands out is followed
until it is freed), never timed.
"""

from __future__ import annotations

import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from support.configs import write_config
from support.db import db_rows
from support.mail import harmless, make, risky_payment
from support.rules import builtin_rules
from support.servers import MailAccount

from guard import reports as dg
from guard import store as st
from guard.config import Config, load_config
from guard.mailbox import imap as imap_module
from guard.policy.model import UNCHECKED_CATEGORY, UNCHECKED_RULE, unchecked_finding
from guard.service.scan import ScanSettings, scan
from guard.service.work import ScanSummary

PADDING = "Some ordinary project notes, nothing to worry about here at all.\n"


def big_harmless(size: int, **kw: Any) -> tuple[bytes, str]:
    """A harmless message of about ``size`` bytes."""
    return make(body="Hello,\n" + PADDING * (size // len(PADDING)), **kw)


def run_scan(config_path: Path) -> ScanSummary:
    config = load_config(config_path)
    store = st.Store(config.store.url)
    try:
        return scan(ScanSettings.from_config(config), store, builtin_rules())
    finally:
        store.close()


def guard_keywords(acct: MailAccount) -> dict[int, set[str]]:
    return {uid: {f for f in fl if f.startswith("$Guard")} for uid, fl in acct.flags().items()}


def msgids_in(acct: MailAccount, folder: str) -> set[str]:
    if folder not in acct.mailboxes():
        return set()
    out = set()
    for raw in acct.messages(folder).values():
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.add(line.split(b":", 1)[1].strip().decode())
    return out


# --------------------------------------------------------------------------- the label


def test_cut_message_is_labelled_unchecked_alone_even_at_risk_none(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    big, big_id = big_harmless(6000, subject="Shop redesign", sender="ana@client.example")
    u_big = mailbox.save(big)
    u_small = mailbox.save(harmless(1, subject="Invoice", sender="bob@other.example")[0])
    config = write_config(tmp_path, mailbox, imap={"max_message_bytes": 2048})

    summary = run_scan(config)

    assert summary.new_messages == 2 and summary.risky == 0
    assert guard_keywords(mailbox) == {u_big: {"$GuardUnchecked"}, u_small: set()}
    assert msgids_in(mailbox, "Guard/Unchecked") == {big_id}  # keywords+folders on Dovecot
    rows = db_rows(
        config,
        "select m.uid, m.risk, f.rule, f.category, f.evidence from message m "
        "join finding f on f.message_pk = m.id",
    )
    assert [(u, r, rule, cat) for u, r, rule, cat, _e in rows] == [
        (u_big, "none", UNCHECKED_RULE, UNCHECKED_CATEGORY)
    ]
    assert "only the first 2048 were fetched" in rows[0][4]

    # A risky reply turns the thread risky: both messages get the thread labels, only the
    # cut one carries Unchecked, and nothing is written twice.
    reply, _ = risky_payment(
        subject="Re: Shop redesign", sender="ana@client.example", reply_to_msg=big_id
    )
    u_reply = mailbox.save(reply)
    run_scan(config)
    kw = guard_keywords(mailbox)
    assert kw[u_big] == {"$GuardUnchecked", "$GuardHighRisk", "$GuardOffPlatformPayment"}
    assert kw[u_reply] == {"$GuardHighRisk", "$GuardOffPlatformPayment"}
    assert msgids_in(mailbox, "Guard/Unchecked") == {big_id}
    assert db_rows(config, "select count(*) from message where label_pending") == [(0,)]


def test_unchecked_label_removed_by_the_user_is_not_added_again(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    big, big_id = big_harmless(6000, subject="Logo", sender="ana@client.example")
    uid = mailbox.save(big)
    config = write_config(
        tmp_path, mailbox, imap={"max_message_bytes": 2048}, labels={"mode": "keywords"}
    )
    run_scan(config)
    assert guard_keywords(mailbox)[uid] == {"$GuardUnchecked"}
    with mailbox.session() as client:
        client.select_folder("INBOX")
        client.remove_flags([uid], [b"$GuardUnchecked"])

    reply, _ = risky_payment(subject="Re: Logo", sender="ana@client.example", reply_to_msg=big_id)
    mailbox.save(reply)
    run_scan(config)  # the thread turns risky: its labels are written, Unchecked is not

    assert guard_keywords(mailbox)[uid] == {"$GuardHighRisk", "$GuardOffPlatformPayment"}


def test_unchecked_label_in_folders_mode(mailbox: MailAccount, tmp_path: Path) -> None:
    big, big_id = big_harmless(6000)
    mailbox.save(big)
    config = write_config(
        tmp_path, mailbox, imap={"max_message_bytes": 2048}, labels={"mode": "folders"}
    )
    summary = run_scan(config)
    assert summary.label_mode == "folders" and summary.labelled == 1
    assert msgids_in(mailbox, "Guard/Unchecked") == {big_id}
    assert not any(guard_keywords(mailbox).values())
    run_scan(config)
    assert len(mailbox.messages("Guard/Unchecked")) == 1  # copied once


def test_unchecked_label_on_gmail(gmail: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, gmail, imap={"max_message_bytes": 2048})
    u_big = gmail.append(big_harmless(6000)[0])
    u_small = gmail.append(harmless(2)[0])

    summary = run_scan(config)

    assert summary.label_mode == "gmail"
    labels = gmail.labels()
    assert "Guard/Unchecked" in labels[u_big]
    assert not {x for x in labels[u_small] if x.startswith("Guard/")}


# --------------------------------------------------------------------------- the digest


def digest_config(url: str) -> Config:
    return Config.model_validate(
        {
            "imap": {"host": "127.0.0.1", "tls": "none", "username": "me"},
            "smtp": {"host": "127.0.0.1", "tls": "none"},
            "digest": {"to": "me@home.example", "from": "guard@work.example", "timezone": "UTC"},
            "store": {"url": url},
        }
    )


def record_unchecked(store: st.Store, reason: str, *, risk: str = "none") -> int:
    """A message row with the unchecked finding, written through the store API (as the
    scanner and the store's fallback for unstorable messages do)."""
    with store.session() as session:
        row = st.StoredMessage(
            account="default",
            folder="INBOX",
            uidvalidity=1,
            uid=7,
            message_id="<cut@client.example>",
            content_hash="0" * 64,
            thread_id="t-cut",
            sender="ana@client.example",
            sender_name="Ana",
            subject="Contract <b>draft</b> from https://evil.example/x",
            risk=risk,
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        st.add_findings(session, row.id, [unchecked_finding([reason])])
        return row.id


@pytest.fixture
def any_store(store_url: str) -> Any:
    store = st.Store(store_url)
    yield store
    store.close()


def test_digest_lists_each_unchecked_message_escaped_and_counts_it(any_store: st.Store) -> None:
    store = any_store
    reason = "more than 1000 MIME parts <script>alert(1)</script> see https://evil.example/p"
    record_unchecked(store, reason)
    config = digest_config(store.url)
    now = st.utcnow() + timedelta(minutes=1)

    rendered = dg.preview(store, config, now=now)

    assert rendered.content.total_unchecked == 1 and rendered.content.total_threads == 0
    assert "1 not read whole" in rendered.subject
    text = rendered.text
    assert "1 message was not read whole" in text
    assert "Could not be read whole: more than 1000 MIME parts" in text
    assert "hxxps://evil[.]example/p" in text and "https://evil.example" not in text
    html = rendered.html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;draft&lt;/b&gt;" in html and "<b>draft" not in html
    assert "evil.example" not in html.replace("evil[.]example", "")

    # Only unchecked messages: the digest is still mailed, not filed as empty.
    built = dg.build_digest(store, config, now=now)
    assert built is not None and built.status == "pending"
    # The finding is in the store under its own category, nothing filtered it out.
    with store.session() as session:
        found = session.exec(select(st.StoredFinding)).all()
    assert [(f.rule, f.category) for f in found] == [(UNCHECKED_RULE, UNCHECKED_CATEGORY)]


def test_unchecked_message_in_a_flagged_thread_is_not_quoted_as_evidence(
    tmp_path: Path,
) -> None:
    store = st.Store(f"sqlite:///{tmp_path / 'guard.sqlite3'}")
    pk = record_unchecked(store, "message is 30000000 bytes; only the first 2048 were fetched")
    with store.session() as session:
        session.add(st.Thread(account="default", thread_id="t-cut", risk="high", labels="scam"))
        row = session.get(st.StoredMessage, pk)
        assert row is not None
        row.risk = "high"
        session.add(row)
    rendered = dg.preview(store, digest_config(store.url), now=st.utcnow() + timedelta(minutes=1))
    (thread,) = rendered.content.threads
    assert all(not m.evidence for m in thread.messages)
    assert [x.rule for x in thread.explanations] == []
    assert rendered.text.count("Could not be read whole: message is 30000000 bytes") == 1
    store.close()


# --------------------------------------------------------------------------- bytes per batch


def test_batches_hold_at_most_batch_bytes_of_mail(
    mailbox: MailAccount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [150_000, 150_000, 150_000, 700_000, 150_000, 150_000, 150_000]
    uids = [mailbox.save(big_harmless(n)[0]) for n in sizes]
    risky_uid = mailbox.save(risky_payment()[0])
    budget = 400_000
    config = write_config(tmp_path, mailbox, imap={"batch_bytes": budget}, evidence={"keep": "all"})

    # Follow every message the IMAP layer hands out until it is freed.
    live: dict[int, int] = {}
    snapshots: list[tuple[int, int]] = []  # (bytes, messages) held when one more arrived
    original = imap_module.Connection._fetched

    def counted(*args: Any, **kwargs: Any) -> Any:
        for fetched in original(*args, **kwargs):
            key = id(fetched)
            live[key] = len(fetched.raw)
            weakref.finalize(fetched, live.pop, key, None)
            snapshots.append((sum(live.values()), len(live)))
            yield fetched

    monkeypatch.setattr(imap_module.Connection, "_fetched", staticmethod(counted))

    summary = run_scan(config)

    assert summary.new_messages == len(uids) + 1  # the whole folder, in one batch of 200
    assert summary.risky == 1
    assert len(snapshots) == len(uids) + 1
    for held, count in snapshots:
        assert held <= budget or count == 1, snapshots  # a bigger one only ever alone
    assert max(held for held, _n in snapshots) >= 600_000  # the big one was read whole
    assert db_rows(config, "select count(*) from evidence") == [(len(uids) + 1,)]
    assert sorted(u for (u,) in db_rows(config, "select uid from message")) == sorted(
        [*uids, risky_uid]
    )
