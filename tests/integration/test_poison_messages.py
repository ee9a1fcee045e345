"""One message can never block a folder: poison messages against a real Dovecot and a real
store (SQLite file and PostgreSQL).

A "poison" message is one whose parsed values the database would refuse as they are: a
subject that decodes to a NUL (PostgreSQL refuses NUL in text), a display name or a
Message-ID longer than the column (PostgreSQL refuses what SQLite silently keeps), lone
surrogates, a Message-ID of many multi-byte characters (bigger than a PostgreSQL index
entry may be). Each one sits between ordinary messages; the scan must complete, record
every UID, judge and label the messages after it, and say nothing that quotes the mail.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from support.cli import run_cli
from support.configs import write_config
from support.db import rows
from support.mail import PAYMENT_BODY, harmless, make
from support.rules import builtin_rules
from support.servers import Dovecot, MailAccount

from guard import store as st
from guard.policy.model import UNCHECKED_RULE

SOAK = os.environ.get("INBOX_GUARD_SOAK", "").strip() not in ("", "0")
MARKER = "Zq7marker"  # text in every poison message that must never reach a log line

HEAD = b"To: freelancer@example.org\r\nDate: Thu, 1 Oct 2026 09:00:00 +0000\r\n"


def _poison(name: str, headers: bytes, body: bytes = b"Hello " + MARKER.encode()) -> bytes:
    if b"Message-ID:" not in headers:
        headers += b"Message-ID: <poison-" + name.encode() + b"@test.example>\r\n"
    if b"From:" not in headers:
        headers += b"From: Client <client@example.com>\r\n"
    if b"Subject:" not in headers:
        headers += b"Subject: " + MARKER.encode() + b" " + name.encode() + b"\r\n"
    return headers + HEAD + b"\r\n" + body + b"\r\n"


def _wide_id(seed: int, chars: int = 880) -> bytes:
    """A Message-ID of ``chars`` varied CJK characters (4 bytes each, hardly compressible):
    within the column's 998 characters, but too big for a PostgreSQL index entry."""
    rng = random.Random(seed)
    local = "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(chars))
    return ("<" + local + "@test.example>").encode()


POISONS: dict[str, bytes] = {
    "nul-subject": _poison("nul-subject", b"Subject: =?utf-8?q?Hello=00World_Zq7marker?=\r\n"),
    "long-display-name": _poison(
        "long-display-name", b'From: "' + b"Ana " * 300 + MARKER.encode() + b'" <ana@x.example>\r\n'
    ),
    "nul-display-name": _poison(
        "nul-display-name", b"From: =?utf-8?q?Ana=00Zq7marker?= <ana@x.example>\r\n"
    ),
    "long-address": _poison(
        "long-address", b"From: <" + b"a" * 1100 + MARKER.encode() + b"@x.example>\r\n"
    ),
    "long-message-id": _poison(
        "long-message-id", b"Message-ID: <" + b"m" * 1500 + MARKER.encode() + b"@test.example>\r\n"
    ),
    "nul-message-id": _poison(
        "nul-message-id", b"Message-ID: =?utf-8?q?<a=00b.Zq7marker@test.example>?=\r\n"
    ),
    "wide-message-id": _poison("wide-message-id", b"Message-ID: " + _wide_id(1) + b"\r\n"),
    "wide-references": _poison(
        "wide-references",
        b"In-Reply-To: " + _wide_id(2) + b"\r\nReferences: " + _wide_id(3) + b"\r\n",
    ),
    "controls": _poison(
        "controls",
        b"Subject: =?utf-8?q?a=01b=1Bc=7Fd=C2=85e=08_Zq7marker?=\r\n"
        b"From: =?utf-8?q?A=0D=0Ana=09Zq7?= <ana@x.example>\r\n",
    ),
    "surrogates": _poison(
        "surrogates",
        b"Subject: =?utf-16-le?b?"
        + base64.b64encode(b"\x00\xd8A\x00\x00\xdc")
        + b"?= caf\xe9 \xff\xfe Zq7marker\r\n",
    ),
}


def _ordinary(i: int) -> bytes:
    """Message ``i``: a payment request (high risk) when ``i`` is odd, else harmless."""
    if i % 2 == 1:
        return make(body=PAYMENT_BODY, subject=f"Payment {i}", sender=f"c{i}@client.example")[0]
    return harmless(i, subject=f"Ordinary {i}", sender=f"c{i}@client.example")[0]


BATCHES = {"batch_size": 25}  # several batches, the poison in the middle of one


def recorded_uids(url: str, folder: str = "INBOX") -> list[int]:
    return [
        int(u)
        for (u,) in rows(url, "select uid from message where folder = :f order by uid", f=folder)
    ]


def run_scan(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("scan", "--config", str(config), "--format", "json")


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, proc.stderr[-3000:]
    assert MARKER not in out and "[parameters:" not in out and "[SQL:" not in out, out[-3000:]


# --------------------------------------------------------------------------- poison in a batch


def test_poison_messages_between_ordinary_ones_are_recorded_and_the_rest_judged(
    store_url: str, mailbox: MailAccount, tmp_path: Path
) -> None:
    """Every poison, each followed by ordinary mail, in one folder and one scan."""
    messages = [_ordinary(i) for i in range(3)]  # UIDs 1-3, 2 risky
    expected_risky = {2}
    poison_uids = []
    for k, name in enumerate(sorted(POISONS)):
        messages.append(POISONS[name])
        poison_uids.append(len(messages))
        i = 3 + k
        messages.append(_ordinary(i))
        if i % 2 == 1:
            expected_risky.add(len(messages))
    mailbox.append_many(messages)
    config = write_config(tmp_path, mailbox, store_url, imap=BATCHES)
    proc = run_scan(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc)
    assert recorded_uids(store_url) == list(range(1, len(messages) + 1))
    # The messages after each poison were judged and their threads labelled on the server.
    risky = {uid for (uid,) in rows(store_url, "select uid from message where risk = 'high'")}
    assert risky == expected_risky, risky
    flags = mailbox.flags()
    for uid in expected_risky:
        assert "$GuardOffPlatformPayment" in flags[uid], flags[uid]
    # Nothing the database refuses went in: no NUL, no lone surrogate, lengths kept.
    for name, sender, mid, subject in rows(
        store_url, "select sender_name, sender, message_id, subject from message"
    ):
        for value in (name, sender, mid or "", subject):
            assert "\x00" not in value and "\x1b" not in value
            value.encode("utf-8")  # no lone surrogate
        assert max(len(name), len(sender), len(mid or "")) <= 998
    # Each poison's own row is there, once; a second scan finds nothing new.
    for uid in poison_uids:
        (count,) = rows(store_url, "select count(*) from message where uid = :u", u=uid)[0]
        assert count == 1, uid
    again = run_scan(config)
    assert again.returncode == 0 and json.loads(again.stdout)["fetched"] == 0, again.stderr


def test_message_the_store_refuses_is_recorded_as_unreadable_and_the_scan_goes_on(
    store_url: str,
    mailbox: MailAccount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever slips past the normalisation: the store refusing one message's row makes it
    "unreadable" (UID, hash, the unchecked finding), never the end of the scan."""
    from guard.config import load_config
    from guard.service.scan import ScanSettings, scan

    mailbox.append_many([_ordinary(0), _ordinary(1), POISONS["nul-subject"], _ordinary(3)])
    config = load_config(write_config(tmp_path, mailbox, store_url, imap=BATCHES))
    store = st.Store(config.store.url)
    real = st.StoredMessage.__init__

    def refuse_marked(self: st.StoredMessage, **values: Any) -> None:
        real(self, **values)
        if MARKER in (values.get("subject") or ""):
            self.size = 2**70  # a number no database column takes: not a string to clean

    monkeypatch.setattr(st.StoredMessage, "__init__", refuse_marked)
    try:
        summary = scan(ScanSettings.from_config(config), store, builtin_rules())
    finally:
        store.close()
    assert summary.new_messages == 4
    assert recorded_uids(store_url) == [1, 2, 3, 4]
    (risk, notes, content_hash) = rows(
        store_url, "select risk, notes, content_hash from message where uid = 3"
    )[0]
    assert "the store refused this message" in notes and len(content_hash) == 64
    findings = rows(
        store_url,
        "select f.rule, f.evidence from finding f join message m on m.id = f.message_pk "
        "where m.uid = 3",
    )
    assert [r for r, _e in findings] == [UNCHECKED_RULE]
    assert findings[0][1].startswith("the store refused this message: "), findings
    assert risk == "none"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "UID 3" in refused[0], refused
    assert MARKER not in caplog.text and "[parameters:" not in caplog.text
    flags = mailbox.flags()
    assert "$GuardOffPlatformPayment" in flags[2] and "$GuardOffPlatformPayment" in flags[4]
    assert "$GuardUnchecked" in flags[3], flags[3]  # the refused message is marked unchecked


# --------------------------------------------------------------------------- the store itself


def test_every_string_value_is_made_storable_on_the_way_in(store_url: str) -> None:
    """What the guard writes goes through one cleaning, whichever way it is written (a
    row, a bulk insert of refs, a look-up): no NUL, control character or lone surrogate,
    lengths fitted to the column, indexed values within a PostgreSQL index entry."""
    nasty = "a\x00b\x1b[1m\udce9\x85c\x7f\td" + "\U00020000" * 1200
    store = st.Store(store_url)
    try:
        with store.session() as session:
            session.add(
                st.StoredMessage(
                    account="default",
                    folder="INBOX",
                    uidvalidity=1,
                    uid=1,
                    message_id=nasty,
                    content_hash="0" * 64,
                    thread_id="t:1",
                    sender=nasty,
                    sender_name=nasty,
                    subject="line\r\none\x00\rtwo\tend\udc80",
                    references=nasty,
                )
            )
            # Two spellings that are one stored ref once cut to the column: one row.
            st.set_refs(session, "default", {"id:" + nasty: "t:1", "id:" + nasty + "x": "t:1"})
        with store.session() as session:
            assert st.ref_map(session, "default", ["id:" + nasty, "id:other"]) == {
                "id:" + nasty: "t:1"
            }
            assert st.threads_for_refs(session, "default", ["id:" + nasty + "y"]) == ["t:1"]
    finally:
        store.close()
    (mid, sender, name, subject, refs) = rows(
        store_url, 'select message_id, sender, sender_name, subject, "references" from message'
    )[0]
    assert subject == "line\none\ntwo\tend\ufffd"
    assert name.startswith("ab[1m\ufffdc d\U00020000") and len(name) == 998
    assert len(mid.encode()) <= st.INDEX_VALUE_BYTES and sender == name
    assert refs.startswith("ab[1m\ufffdc\td") and len(refs) == len(nasty) - 4
    (ref,) = rows(store_url, "select ref from thread_ref")[0]
    assert len(ref.encode()) <= st.INDEX_VALUE_BYTES


# --------------------------------------------------------------------------- any bytes at all


_FOLDED = hs.sampled_from(
    [
        b"Subject: =?utf-8?q?a=00b?=\r\n",
        b'From: "' + b"x" * 1200 + b'" <a@b.example>\r\n',
        b"Message-ID: <" + b"\xe4\xb8\x80" * 700 + b"@x>\r\n",
        b"References: <a\x01b@x> <" + b"r" * 1000 + b"@x>\r\n",
        b"Subject: \xff\xfe\xed\xa0\x80\r\n",
        b"Date: Fri, 31 Dec 9999 23:59:59 -1200\r\n",
        b"Content-Type: text/plain; charset=utf-16\r\n",
    ]
)


@hs.composite
def any_message(draw: hs.DrawFn) -> bytes:
    kind = draw(hs.integers(0, 2))
    if kind == 0:  # any bytes
        return draw(hs.binary(max_size=600))
    headers = b"".join(draw(hs.lists(_FOLDED, max_size=4)))
    noise = draw(hs.binary(max_size=200))
    if kind == 1:  # headers that hit the columns' edges, then anything
        return headers + b"\r\n" + noise
    text = draw(hs.text(max_size=300)).encode("utf-8", "surrogatepass")
    return b"From: " + text[:80] + b"\r\nSubject: " + text + b"\r\n" + headers + b"\r\n" + noise


@pytest.fixture(scope="module")
def shared_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    postgres = request.getfixturevalue("postgres")
    yield postgres.create_database("poison_property")


def _property_run(
    dovecot: Dovecot, url: str, tmp: Path, counter: list[int], raws: list[bytes]
) -> None:
    from guard.config import load_config
    from guard.service.scan import ScanSettings, scan

    counter[0] += 1
    acct = dovecot.account(f"poison-prop-{counter[0]}-{os.getpid()}")
    # Dovecot refuses a zero-byte APPEND ("Can't save a zero byte message"): a line break.
    appended = acct.append_many([raw or b"\r\n" for raw in raws])
    config = load_config(write_config(tmp, acct, url, imap=BATCHES))
    settings = ScanSettings.from_config(config, "default")
    settings = dataclasses.replace(settings, account=acct.user)
    store = st.Store(url)
    try:
        scan(settings, store, builtin_rules())
    finally:
        store.close()
    got = [
        int(u)
        for (u,) in rows(
            url,
            "select uid from message where account = :a and folder = 'INBOX' order by uid",
            a=acct.user,
        )
    ]
    assert got == sorted(appended)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_any_bytes_as_messages_scan_completes_and_every_uid_is_recorded(
    backend: str, dovecot: Dovecot, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("shared_pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'prop.sqlite3'}"
    )
    counter = [0]

    @settings(
        max_examples=200 if SOAK else 12,
        deadline=None,
        derandomize=not SOAK,
        suppress_health_check=list(HealthCheck),
    )
    @given(hs.lists(any_message(), min_size=1, max_size=4))
    def check(raws: list[bytes]) -> None:
        _property_run(dovecot, url, tmp_path, counter, raws)

    check()
