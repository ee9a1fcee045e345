"""Faults against real parts: the guard cannot lose, skip or double-label mail.

Each scenario seeds a fresh Dovecot user with a known mailbox (a few hundred messages;
risky threads spanning INBOX and Sent; some messages already ``\\Seen``, ``\\Flagged``,
``\\Answered`` or carrying a keyword of another client), lets the guard work through the
fault-injecting proxy of ``tests/support/proxy.py`` (``tls = "none"`` on loopback, so
commands can be matched), injects a fault at a point chosen by the seed, lets the guard
carry on (daemon) or runs it again (scan), and then checks, through a second, independent
IMAP connection and the SQLite file, what a user would check:

- every message of INBOX and Sent is recorded exactly once, in its folder;
- every message of a risky thread carries exactly the thread's keywords, and has exactly
  one copy (counted by Message-ID) in each of the thread's label folders; no other message
  carries a guard keyword or has a copy;
- no message lost a flag or keyword, or gained ``\\Seen``; nothing was deleted or moved;
- right after the fault (before recovery), no partial state: the folder state is never
  ahead of what is recorded, a label is only on a message whose findings are committed,
  no label-folder copy exists twice, and the database passes ``PRAGMA integrity_check``.

Seeds: ``conftest.py`` (2-4 runs per scenario by default, 10-25 with
``INBOX_GUARD_SOAK=1``, which also runs the tests marked ``soak``: waits of minutes).
A scenario that exposes a bug in ``guard/`` is marked ``xfail(strict=True)`` with the bug
in one line until the fix lands, so it turns red the day the bug is fixed and the mark goes.
"""

from __future__ import annotations

import contextlib
import email.parser
import math
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import Daemon, run_cli
from support.configs import smtp_section, write_config
from support.db import rows
from support.mail import CONTACT_BODY, HARMLESS_BODIES, PAYMENT_BODY, make
from support.proxy import CutRule, FaultProxy
from support.servers import Dovecot, MailAccount, SmtpSink

from guard import reports as dg
from guard import store as st
from guard.config import load_config
from guard.policy import load_rules
from guard.service.scan import ScanError, ScanSettings, scan

RULES = load_rules()
DB_NAME = "guard.sqlite3"
FREELANCER = "freelancer@example.org"
POLL = 2  # the daemon's poll interval in these tests (the minimum the config allows)

HIGH_KEYWORD = "$GuardHighRisk"
HIGH_FOLDER = "Guard/High risk"
KEYWORDS = {"payment": "$GuardOffPlatformPayment", "contact": "$GuardOffPlatformContact"}
FOLDERS = {"payment": "Guard/Off-platform payment", "contact": "Guard/Off-platform contact"}
LEAK_BODY = "Sure! My WhatsApp is +1 415 555 0199, message me there and we skip the platform."
REPLIES = [
    "Thanks for the details. I will send the first draft by Friday.",
    "Sounds good, I have pushed the changes to the staging branch for your review.",
    "Sure, I can adjust the colours. The revised mockups follow tomorrow.",
]
CORPUS_START = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
OTHER_KEYWORD = "$Work"  # set by "another client": the guard must leave it alone

# A thread is a list of steps: (folder, body, category the body makes the thread risky for).
Step = tuple[str, str, str | None]
THREAD_KINDS: dict[str, list[Step]] = {
    "payment": [
        ("INBOX", "harmless", None),
        ("Sent", "reply", None),
        ("INBOX", PAYMENT_BODY, "payment"),
        ("INBOX", "harmless", None),
    ],
    "contact": [("INBOX", CONTACT_BODY, "contact"), ("Sent", "reply", None)],
    "leak": [
        ("INBOX", "harmless", None),
        ("Sent", LEAK_BODY, "contact"),
        ("INBOX", "harmless", None),
    ],
    "both": [
        ("INBOX", "harmless", None),
        ("INBOX", PAYMENT_BODY, "payment"),
        ("Sent", "reply", None),
        ("INBOX", CONTACT_BODY, "contact"),
    ],
    "quiet": [("INBOX", "harmless", None), ("Sent", "reply", None), ("INBOX", "harmless", None)],
}


# --------------------------------------------------------------------------- the mailbox


def _norm_id(value: str) -> str:
    return value.strip().strip("<>").strip()


@dataclass(frozen=True)
class Mail:
    folder: str
    msgid: str  # normalised: no angle brackets
    raw: bytes
    flags: frozenset[str]
    thread: int


@dataclass
class Thread:
    number: int
    subject: str
    client: str
    ids: list[str] = field(default_factory=list)  # Message-IDs as written, oldest first
    risks: set[str] = field(default_factory=set)


@dataclass
class Corpus:
    """What the mailbox holds and what the guard must make of it."""

    rng: random.Random
    name: str = "corpus"
    mails: list[Mail] = field(default_factory=list)
    threads: dict[int, Thread] = field(default_factory=dict)

    # -- building ------------------------------------------------------------------------

    def new_thread(self, topic: str) -> Thread:
        number = len(self.threads) + 1
        thread = Thread(number, f"Project {number}: {topic}", f"client{number}@c{number}.example")
        self.threads[number] = thread
        return thread

    def message(self, thread: Thread, folder: str, body: str, risk: str | None) -> Mail:
        """The next message of ``thread`` (a reply to its latest), not yet on the server."""
        rng = self.rng
        if body == "harmless":
            body = HARMLESS_BODIES[rng.randrange(len(HARMLESS_BODIES))]
        elif body == "reply":
            body = REPLIES[rng.randrange(len(REPLIES))]
        outgoing = folder == "Sent"
        number = len(self.mails) + 1  # Message-ID and Date from the seed alone: same bytes
        raw, msgid = make(
            sender=FREELANCER if outgoing else thread.client,
            to=thread.client if outgoing else FREELANCER,
            subject=("Re: " if thread.ids else "") + thread.subject,
            body=body,
            msgid=f"<{self.name}.{number}@corpus.test.example>",
            date=CORPUS_START + timedelta(minutes=7 * number),
            reply_to_msg=thread.ids[-1] if thread.ids else None,
            references=thread.ids[:-1] or None,
        )
        thread.ids.append(msgid)
        if risk:
            thread.risks.add(risk)
        flags: set[str] = set()
        if outgoing:
            flags.add("\\Seen")
            if rng.random() < 0.1:
                flags.add("\\Flagged")
        else:
            for flag, chance in (("\\Seen", 0.5), ("\\Flagged", 0.12), ("\\Answered", 0.08)):
                if rng.random() < chance:
                    flags.add(flag)
            if rng.random() < 0.08:
                flags.add(OTHER_KEYWORD)
        mail = Mail(folder, _norm_id(msgid), raw, frozenset(flags), thread.number)
        self.mails.append(mail)
        return mail

    # -- expectations --------------------------------------------------------------------

    def in_folder(self, folder: str) -> list[Mail]:
        return [m for m in self.mails if m.folder == folder]

    def keywords(self, mail: Mail) -> set[str]:
        risks = self.threads[mail.thread].risks
        return {HIGH_KEYWORD, *(KEYWORDS[r] for r in risks)} if risks else set()

    def copies(self) -> dict[str, Counter[str]]:
        """Label folder -> Message-IDs it must hold, each once."""
        out: dict[str, Counter[str]] = {}
        for mail in self.mails:
            risks = self.threads[mail.thread].risks
            if not risks:
                continue
            for folder in (HIGH_FOLDER, *(FOLDERS[r] for r in risks)):
                out.setdefault(folder, Counter())[mail.msgid] += 1
        return out

    def risky_threads(self) -> list[Thread]:
        return [t for t in self.threads.values() if t.risks]

    def quiet_threads(self) -> list[Thread]:
        return [t for t in self.threads.values() if not t.risks and len(t.ids) > 1]

    # -- the server ----------------------------------------------------------------------

    def upload(self, acct: MailAccount, mails: Sequence[Mail] | None = None) -> None:
        """APPEND ``mails`` (default: all) with their flags, in order, per folder."""
        todo = list(self.mails if mails is None else mails)
        with acct.session() as client:
            for folder in ("INBOX", "Sent"):
                items = [
                    {"msg": m.raw, "flags": sorted(m.flags)} for m in todo if m.folder == folder
                ]
                for start in range(0, len(items), 200):
                    client.multiappend(folder, items[start : start + 200])


def build_corpus(
    rng: random.Random,
    name: str,
    *,
    risky_each: int = 3,
    quiet: int = 8,
    singles: int = 160,
) -> Corpus:
    """A mailbox in time order: threads of every kind interleaved with single messages
    (about 220 messages by default, about a fifth of them in Sent)."""
    corpus = Corpus(rng, name)
    plans: list[tuple[Thread, list[Step]]] = []
    for kind in ("payment", "contact", "leak", "both"):
        for _ in range(risky_each):
            plans.append((corpus.new_thread(kind), list(THREAD_KINDS[kind])))
    for _ in range(quiet):
        plans.append((corpus.new_thread("quiet"), list(THREAD_KINDS["quiet"])))
    for i in range(singles):
        folder = "Sent" if i % 9 == 0 else "INBOX"
        body = "reply" if folder == "Sent" else "harmless"
        plans.append((corpus.new_thread("single"), [(folder, body, None)]))
    # Interleave, keeping each thread's own order: a risky reply often lands batches after
    # the harmless messages it makes risky.
    while plans:
        weights = [len(steps) for _thread, steps in plans]
        index = rng.choices(range(len(plans)), weights)[0]
        thread, steps = plans[index]
        folder, body, risk = steps.pop(0)
        corpus.message(thread, folder, body, risk)
        if not steps:
            plans.pop(index)
    return corpus


def seeded_mailbox(acct: MailAccount, seed: int, **sizes: int) -> Corpus:
    corpus = build_corpus(random.Random(f"corpus-{seed}"), f"s{seed}", **sizes)
    corpus.upload(acct)
    return corpus


# --------------------------------------------------------------------------- looking at it


@dataclass(frozen=True)
class Seen:
    uid: int
    msgid: str
    flags: frozenset[str]


def guard_keywords(flags: frozenset[str] | set[str]) -> set[str]:
    return {f for f in flags if f.startswith("$Guard") or f == "$Phishing"}


class Snapshot(dict[str, list["Seen"]]):
    """Mailbox name -> its messages; :attr:`uidvalidity` per mailbox."""

    def __init__(self) -> None:
        super().__init__()
        self.uidvalidity: dict[str, int] = {}


def snapshot(acct: MailAccount) -> Snapshot:
    """Every selectable mailbox: UID, Message-ID and flags of each message (one separate,
    read-only IMAP session; nothing is marked \\Seen)."""
    parser = email.parser.BytesHeaderParser()
    out = Snapshot()
    with acct.session() as client:
        for flags, _delim, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            info = client.select_folder(name, readonly=True)
            out.uidvalidity[str(name)] = int(info[b"UIDVALIDITY"])
            uids = client.search("ALL")
            rows: list[Seen] = []
            if uids:
                fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                for uid, data in sorted(fetched.items()):
                    header = next(v for k, v in data.items() if k.startswith(b"BODY[HEADER"))
                    msgid = _norm_id(str(parser.parsebytes(header).get("Message-ID", "")))
                    got = frozenset(
                        (f.decode() if isinstance(f, bytes) else str(f)) for f in data[b"FLAGS"]
                    )
                    rows.append(Seen(int(uid), msgid, got - {"\\Recent"}))
            out[str(name)] = rows
            client.unselect_folder()
    return out


def db_query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def db_count(db: Path, sql: str = "select count(*) from message", *params: Any) -> int:
    if not db.exists():
        return 0
    try:
        return int(db_query(db, sql, *params)[0][0])
    except sqlite3.OperationalError:  # no tables yet, or locked for a moment
        return 0


def _check_mail(corpus: Corpus, snap: dict[str, list[Seen]], final: bool) -> list[str]:
    """Problems with INBOX and Sent: missing, extra or duplicated messages, changed flags,
    wrong keywords (exactly the expected ones when ``final``, a subset before)."""
    problems: list[str] = []
    for folder in ("INBOX", "Sent"):
        expected = {m.msgid: m for m in corpus.in_folder(folder)}
        on_server = Counter(s.msgid for s in snap.get(folder, []))
        missing = set(expected) - set(on_server)
        extra = set(on_server) - set(expected)
        twice = [i for i, n in on_server.items() if n > 1]
        if missing or extra or twice:
            problems.append(
                f"{folder}: {len(missing)} missing, {len(extra)} unexpected, "
                f"{len(twice)} duplicated messages (e.g. {sorted(missing | extra)[:2]})"
            )
        for seen in snap.get(folder, []):
            mail = expected.get(seen.msgid)
            if mail is None:
                continue
            own = set(seen.flags - guard_keywords(seen.flags))
            if own != set(mail.flags):
                problems.append(
                    f"{folder} uid {seen.uid}: flags {sorted(own)}, seeded {sorted(mail.flags)}"
                )
            want = corpus.keywords(mail)
            got = guard_keywords(seen.flags)
            if (got != want) if final else not got <= want:
                problems.append(
                    f"{folder} uid {seen.uid} (thread {mail.thread}): keywords {sorted(got)}, "
                    f"expected {sorted(want)}"
                )
    return problems


def _check_copies(corpus: Corpus, snap: dict[str, list[Seen]], final: bool) -> list[str]:
    problems: list[str] = []
    expected = corpus.copies()
    label_folders = {n for n in snap if n == "Guard" or n.startswith("Guard/")}
    for folder in sorted(label_folders | set(expected)):
        held = Counter(s.msgid for s in snap.get(folder, []))
        want = expected.get(folder, Counter())
        twice = sorted(i for i, n in held.items() if n > 1)
        wrong = sorted(set(held) - set(want))
        lacking = sorted(set(want) - set(held))
        if twice:
            problems.append(f"{folder}: {len(twice)} message(s) copied more than once")
        if wrong:
            problems.append(f"{folder}: {len(wrong)} copies of messages that do not belong there")
        if final and lacking:
            problems.append(f"{folder}: {len(lacking)} copies missing")
    return problems


def _check_store(corpus: Corpus, db: Path, final: bool) -> list[str]:
    problems: list[str] = []
    if not db.exists():
        return [] if not final else [f"{db} does not exist"]
    integrity = db_query(db, "pragma integrity_check")
    if integrity != [("ok",)]:
        problems.append(f"integrity_check: {integrity[:3]}")
    rows = db_query(db, "select folder, message_id, count(*) from message group by 1, 2")
    recorded = {(f, _norm_id(i or "")): n for f, i, n in rows}
    twice = [k for k, n in recorded.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} message(s) recorded more than once, e.g. {twice[:2]}")
    expected = {(m.folder, m.msgid) for m in corpus.mails}
    unknown = set(recorded) - expected
    if unknown:
        problems.append(
            f"{len(unknown)} recorded message(s) not in the mailbox: {sorted(unknown)[:2]}"
        )
    bare = db_count(
        db,
        "select count(*) from message m where m.risk in ('medium', 'high') and not exists "
        "(select 1 from finding f where f.message_pk = m.id)",
    )
    if bare:
        problems.append(f"{bare} risky message(s) recorded without their findings")
    if final:
        lacking = expected - set(recorded)
        if lacking:
            problems.append(f"{len(lacking)} message(s) never recorded, e.g. {sorted(lacking)[:2]}")
        pending = db_count(db, "select count(*) from message where label_pending")
        if pending:
            problems.append(f"{pending} message(s) still waiting for labels")
        undone = db_count(db, "select count(*) from label_copy where not done")
        if undone:
            problems.append(f"{undone} label copies not confirmed")
    return problems


def _check_order(snap: Snapshot, db: Path) -> list[str]:
    """Crash-safety order: the folder state never runs ahead of what is recorded, and a
    label exists only on messages whose findings are committed."""
    problems: list[str] = []
    if not db.exists() or not db_count(
        db, "select count(*) from sqlite_master where name='folder_state'"
    ):
        return problems
    states = db_query(db, "select folder, uidvalidity, last_uid from folder_state")
    for folder, uidvalidity, last_uid in states:
        at = {
            uid
            for (uid,) in db_query(
                db, "select uid from message where folder=? and uidvalidity=?", folder, uidvalidity
            )
        }
        if snap.uidvalidity.get(folder) != uidvalidity:
            continue  # recreated since: the next scan re-reads it from the start
        behind = [s.uid for s in snap.get(folder, []) if s.uid <= last_uid and s.uid not in at]
        if behind:
            problems.append(
                f"{folder}: state at uid {last_uid} but {len(behind)} message(s) at or below it "
                f"were never recorded (e.g. uid {behind[0]})"
            )
    recorded = {
        (f, _norm_id(i or "")) for f, i in db_query(db, "select folder, message_id from message")
    }
    any_folder = {i for _f, i in recorded}
    for folder in ("INBOX", "Sent"):
        for s in snap.get(folder, []):
            if guard_keywords(s.flags) and (folder, s.msgid) not in recorded:
                problems.append(f"{folder} uid {s.uid} labelled but not recorded")
    for folder, seen in snap.items():
        if folder.startswith("Guard/"):
            for s in seen:
                if s.msgid not in any_folder:
                    problems.append(f"{folder} holds a copy of an unrecorded message")
    return problems


def _problems(corpus: Corpus, acct: MailAccount, db: Path, final: bool) -> list[str]:
    snap = snapshot(acct)
    problems = (
        _check_mail(corpus, snap, final=final)
        + _check_copies(corpus, snap, final=final)
        + _check_store(corpus, db, final=final)
    )
    return problems if final else problems + _check_order(snap, db)


def assert_no_partial_state(corpus: Corpus, acct: MailAccount, db: Path) -> None:
    """Right after a fault, before any recovery."""
    problems = _problems(corpus, acct, db, final=False)
    assert not problems, "partial state after the fault:\n  " + "\n  ".join(problems[:20])


def assert_intact(corpus: Corpus, acct: MailAccount, db: Path) -> None:
    """After recovery: everything exactly once, exactly the expected labels."""
    problems = _problems(corpus, acct, db, final=True)
    assert not problems, "after recovery:\n  " + "\n  ".join(problems[:20])


# --------------------------------------------------------------------------- running the guard


def scan_once(config: Path) -> str | None:
    """One scan in this process, as ``inbox-guard scan`` runs it: None when it completed,
    else its one-line error."""
    settings = load_config(config)
    store = st.Store(settings.store.url)
    try:
        scan(ScanSettings.from_config(settings), store, RULES)
    except ScanError as exc:
        return str(exc)
    finally:
        store.close()
    return None


def assert_one_clear_line(stderr: str, *expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, f"a traceback instead of an error line:\n{stderr[-3000:]}"
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{stderr[-3000:]}"
    assert len(lines[0]) < 300, lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


def settled(corpus: Corpus, db: Path) -> Callable[[], bool]:
    """True once the store holds every message with no label left to write."""

    def done() -> bool:
        return (
            db_count(db) == len(corpus.mails)
            and db_count(db, "select count(*) from message where label_pending") == 0
            and db_count(db, "select count(*) from label_copy where not done") == 0
        )

    return done


def assert_clean_log(daemon: Daemon, *secrets: str) -> None:
    log = daemon.log
    assert "Traceback" not in log, log
    for line in daemon.lines:
        assert len(line) < 400, f"a log line of {len(line)} characters: {line[:200]}..."
    for secret in secrets:
        assert secret not in log


# --------------------------------------------------------------------------- the setup

SMALL = {"risky_each": 1, "quiet": 1, "singles": 12}  # about 20 messages
PLAIN_IMAP = {"tls": "none", "ca_file": None, "timeout": 5, "batch_size": 25}


@dataclass
class Scenario:
    """Where a fault scenario starts: the mailbox as seeded, the scenario's own random
    choices, the fault proxy the guard talks through and the config that says so."""

    acct: MailAccount
    tmp: Path
    corpus: Corpus
    rng: random.Random
    proxy: FaultProxy | None
    db: Path  # the SQLite store the config names (unless a ``store`` table says otherwise)
    smtp: SmtpSink | None = None
    config: Path = field(default_factory=Path)

    def configure(
        self,
        *,
        password: str | None = None,
        imap: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        **tables: Any,
    ) -> Path:
        """(Re)write :attr:`config`: IMAP through the proxy (unless it stands in front of
        the SMTP sink), polls every ``POLL`` s, 5 s timeouts, batches of 25; ``imap``,
        ``schedule`` and further tables merge into that (``support.configs.write_config``)."""
        imap_port = self.acct.port
        if self.proxy is not None and self.smtp is None:
            imap_port = self.proxy.port
        if self.smtp is not None:
            via = self.proxy.port if self.proxy else self.smtp.port
            tables["smtp"] = smtp_section(  # no TLS on loopback: the proxy sees every command
                self.tmp, self.smtp, port=via, tls="none", ca_file=None, timeout=SMTP_TIMEOUT
            )
            tables["digest"] = DIGEST
        self.config = write_config(
            self.tmp,
            self.acct,
            f"sqlite:///{self.db}",
            password=password,
            imap={**PLAIN_IMAP, "port": imap_port, **(imap or {})},
            schedule={"poll_interval": POLL, **(schedule or {})},
            **tables,
        )
        return self.config


@pytest.fixture
def scenario(
    mailbox: MailAccount, tmp_path: Path, proxy_factory: Callable[..., FaultProxy]
) -> Callable[..., Scenario]:
    """``scenario(name, seed, ...)``: the seeded setup every fault scenario starts from.

    ``mail``: the mailbox uploaded first, ``"full"`` (about 220 messages), ``"small"``
    (about 20) or ``"none"``. ``proxy``: a fault proxy (seeded) in front of Dovecot, or of
    the sink given as ``smtp``; False: none. ``rng``: ``Random(f"{name}-{seed}")``.
    ``acct`` / ``tmp`` / ``db``: another account, directory or store file than the test's;
    ``create_store``: the (empty) store exists before the scenario begins.
    Other keywords go to :meth:`Scenario.configure`, which writes the config.
    """

    def setup(
        name: str,
        seed: int = 0,
        *,
        mail: str = "full",
        proxy: bool = True,
        smtp: SmtpSink | None = None,
        acct: MailAccount | None = None,
        tmp: Path | None = None,
        db: Path | None = None,
        create_store: bool = False,
        **config: Any,
    ) -> Scenario:
        acct = acct or mailbox
        tmp = tmp or tmp_path
        sizes = {"full": {}, "small": SMALL, "none": None}[mail]
        if sizes is None:
            corpus = Corpus(random.Random(f"corpus-{seed}"), f"s{seed}")
        else:
            corpus = seeded_mailbox(acct, seed, **sizes)
        target = smtp.port if smtp else acct.port
        fault_proxy = proxy_factory(target, seed=seed) if proxy else None
        rng = random.Random(f"{name}-{seed}")
        s = Scenario(acct, tmp, corpus, rng, fault_proxy, db or tmp / DB_NAME, smtp)
        s.configure(**config)
        if create_store:
            st.Store(f"sqlite:///{s.db}").close()
        return s

    return setup


# --------------------------------------------------------------------------- the proxy itself


def test_proxy_cuts_after_exactly_the_requested_reply_bytes(
    dovecot: Dovecot, proxy_factory: Callable[..., FaultProxy]
) -> None:
    import socket

    proxy = proxy_factory(dovecot.port, seed=1)
    rule = proxy.cut_on(b"CAPABILITY", reply_bytes=17)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        greeting = sock.recv(4096)
        assert greeting.startswith(b"* OK")
        sock.sendall(b"a1 CAPABILITY\r\n")
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    assert rule.fired.is_set() and rule.acted.wait(2)
    assert len(got) == 17 and got.startswith(b"* CAPABILITY")
    assert proxy.connections == 1 and proxy.count(b"CAPABILITY") == 1
    stalled = proxy.stall_on(b"NOOP")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        greeting = b""
        while not greeting.endswith(b"\r\n"):  # the whole greeting, however it is split
            greeting += sock.recv(4096)
        sock.settimeout(0.5)
        sock.sendall(b"a1 NOOP\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # no answer, and no FIN either
    assert stalled.acted.wait(2)
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    proxy.resume()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        assert sock.recv(4096).startswith(b"* OK")


# --------------------------------------------------------------------------- 1, 2: cuts mid-scan


def _cut_then_rescan(
    s: Scenario, choose: Callable[[random.Random], tuple[bytes, int, int | None]]
) -> None:
    """Cut the scan's connection at seeded commands (one to three times, each on its own
    run), check there is no partial state after each, then scan cleanly and check all."""
    corpus, rng, proxy, config, db, acct = s.corpus, s.rng, s.proxy, s.config, s.db, s.acct
    assert proxy is not None
    faults = rng.choice([1, 1, 2, 3])
    for attempt in range(faults):
        pattern, nth, reply_bytes = choose(rng)
        rule = proxy.cut_on(pattern, nth=nth, reply_bytes=reply_bytes)
        error = scan_once(config)
        proxy.resume()  # disarms the rule if it did not fire
        if attempt == 0:
            assert rule.fired.is_set(), f"{pattern!r} #{nth} never came: the fault was not injected"
        if error is not None:
            assert "lost" in error or "did not answer" in error, error
        assert_no_partial_state(corpus, acct, db)
        if error is None:
            break
    assert scan_once(config) is None
    assert_intact(corpus, acct, db)
    assert scan_once(config) is None  # a further scan changes nothing
    assert_intact(corpus, acct, db)


@pytest.mark.seeds(fast=3, soak=25)
def test_connection_cut_mid_fetch_batch(seed: int, scenario: Callable[..., Scenario]) -> None:
    def choose(rng: random.Random) -> tuple[bytes, int, int | None]:
        # 25 per batch: a metadata FETCH, then the bodies (~17 KB); the cut lands in either.
        reply = rng.choice([None, 0, rng.randint(1, 400), rng.randint(400, 20_000)])
        return b"UID FETCH", rng.randint(1, 16), reply

    _cut_then_rescan(scenario("cuts", seed), choose)


@pytest.mark.seeds(fast=3, soak=25)
def test_connection_cut_mid_label_store_or_copy(
    seed: int, scenario: Callable[..., Scenario]
) -> None:
    def choose(rng: random.Random) -> tuple[bytes, int, int | None]:
        # None: the command never reaches the server; 0: it may or may not run; 1..30: it
        # ran (the server has begun its answer) but the guard never reads the OK.
        pattern = rng.choice([b"UID STORE", b"UID STORE", b"UID COPY", b"UID COPY", b"CREATE"])
        nth = 1 if pattern == b"CREATE" else rng.randint(1, 4)
        return pattern, nth, rng.choice([None, 0, 1, rng.randint(2, 30)])

    _cut_then_rescan(scenario("cuts", seed), choose)


# --------------------------------------------------------------------------- 5: UIDVALIDITY


def _restore_flags(acct: MailAccount, corpus: Corpus, folder: str) -> None:
    """Set each message's seeded flags again (a recreated folder filled without them)."""
    by_id = {m.msgid: m for m in corpus.in_folder(folder)}
    with acct.session() as client:
        client.select_folder(folder)
        for seen in snapshot_folder(client, folder):
            flags = sorted(by_id[seen.msgid].flags)
            if flags:
                client.add_flags([seen.uid], [f.encode() for f in flags], silent=True)


def snapshot_folder(client: Any, folder: str) -> list[Seen]:
    parser = email.parser.BytesHeaderParser()
    uids = client.search("ALL")
    if not uids:
        return []
    fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    out = []
    for uid, data in sorted(fetched.items()):
        header = next(v for k, v in data.items() if k.startswith(b"BODY[HEADER"))
        msgid = _norm_id(str(parser.parsebytes(header).get("Message-ID", "")))
        out.append(Seen(int(uid), msgid, frozenset(str(f) for f in data[b"FLAGS"])))
    return out


def _more_mail(corpus: Corpus, rng: random.Random) -> list[Mail]:
    """New mail for a later scan: a quiet thread turns risky, a risky one gets a harmless
    reply in Sent, and a new single message."""
    quiet = rng.choice(corpus.quiet_threads())
    risky = rng.choice(corpus.risky_threads())
    body, risk = rng.choice([(PAYMENT_BODY, "payment"), (CONTACT_BODY, "contact")])
    return [
        corpus.message(quiet, "INBOX", body, risk),
        corpus.message(risky, "Sent", "reply", None),
        corpus.message(corpus.new_thread("single"), "INBOX", "harmless", None),
    ]


@pytest.mark.seeds(fast=3, soak=20)
def test_uidvalidity_changed_between_scans(
    seed: int, mailbox: MailAccount, scenario: Callable[..., Scenario]
) -> None:
    s = scenario("uidvalidity", seed)
    corpus, rng, proxy, config, db = s.corpus, s.rng, s.proxy, s.config, s.db
    if rng.random() < 0.5:  # the first scan is itself cut short
        proxy.cut_on(b"UID FETCH", nth=rng.randint(1, 16), reply_bytes=rng.randint(0, 20_000))
        scan_once(config)
        proxy.resume()
    else:
        assert scan_once(config) is None
    for round_ in range(rng.choice([1, 1, 2])):
        folders = rng.choice([["INBOX"], ["Sent"], ["INBOX", "Sent"]])
        for folder in folders:
            old = mailbox.uidvalidity(folder)
            if rng.random() < 0.5:
                # Restored as they were, guard keywords included, in the same order.
                new = mailbox.recreate_mailbox(folder)
            else:
                # Re-filled in another order (other UIDs for the same messages), no keywords.
                raws = [m.raw for m in corpus.in_folder(folder)]
                rng.shuffle(raws)
                new = mailbox.recreate_mailbox(folder, raws)
                _restore_flags(mailbox, corpus, folder)
            assert new != old
        if round_ == 0 and rng.random() < 0.5:
            corpus.upload(mailbox, _more_mail(corpus, rng))
        assert scan_once(config) is None
    assert_intact(corpus, mailbox, db)
    # The old locations are gone from the store: every row is at the folder's current one.
    for folder in ("INBOX", "Sent"):
        current = mailbox.uidvalidity(folder)
        stale = db_count(
            db, "select count(*) from message where folder=? and uidvalidity<>?", folder, current
        )
        assert stale == 0, f"{folder}: {stale} row(s) still under an old UIDVALIDITY"


# --------------------------------------------------------------------------- 3, 4: the daemon


RETRY = re.compile(r"retrying in (\d+) s")


def _reached(
    db: Path, done: Callable[[], bool], rows: int = 0, rule: CutRule | None = None
) -> Callable[[], bool]:
    """The kill point: ``rows`` messages recorded, or ``rule`` acted (or nothing left)."""

    def reached() -> bool:
        if done():
            return True
        return rule.acted.is_set() if rule is not None else db_count(db) >= rows

    return reached


@pytest.mark.seeds(fast=3, soak=20)
def test_daemon_sigkilled_mid_scan_then_restarted(
    seed: int, scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    s = scenario("kill", seed)
    corpus, rng, proxy, config, db, mailbox = s.corpus, s.rng, s.proxy, s.config, s.db, s.acct
    assert proxy is not None
    done = settled(corpus, db)
    for _ in range(rng.choice([1, 1, 2])):
        where = rng.choice(["UID FETCH", "UID STORE", "UID COPY", "SEARCH", "rows"])
        daemon = daemons(config)
        if where == "rows":
            target = db_count(db) + rng.randint(1, 250)
            daemon.wait_for(_reached(db, done, target), 60, f"{target} messages recorded")
        else:
            # Freeze the daemon right at the command (0: sent; 1: the server has run it and
            # begun its answer), then kill it there.
            nth = rng.randint(1, 6)
            rule = proxy.stall_on(where.encode(), nth=nth, reply_bytes=rng.choice([0, 1]))
            daemon.wait_for(_reached(db, done, rule=rule), 60, f"the daemon at {where} #{nth}")
        daemon.kill()
        proxy.resume()
        assert_no_partial_state(corpus, mailbox, db)
    daemon = daemons(config)
    daemon.wait_log("scan:", 60)  # a whole scan by the restarted daemon (signals handled)
    daemon.wait_for(done, 60, "every message recorded and labelled")
    assert daemon.stop() == 0
    assert_intact(corpus, mailbox, db)
    assert_clean_log(daemon, mailbox.password)


@pytest.mark.seeds(fast=2, soak=20)
def test_dovecot_restarted_while_the_daemon_runs(
    seed: int,
    dovecot: Dovecot,
    mailbox: MailAccount,
    scenario: Callable[..., Scenario],
    daemons: Callable[..., Daemon],
) -> None:
    s = scenario("restart", seed)
    corpus, rng, proxy, db = s.corpus, s.rng, s.proxy, s.db
    assert proxy is not None
    idle = rng.random() < 0.5
    daemon = daemons(s.configure(imap={"timeout": 2}, schedule={"idle": idle}))
    pattern = rng.choice([b"UID FETCH", b"UID STORE", b"UID COPY"])
    nth = rng.randint(1, 4)
    rule = proxy.stall_on(pattern, nth=nth, reply_bytes=rng.choice([0, 1]))
    daemon.wait_for(rule.acted.is_set, 60, f"the daemon at {pattern!r} #{nth}")
    dovecot.stop()  # its sessions end; the proxy passes the close on
    try:
        mark = daemon.wait_log("scan failed", 30)
        time.sleep(rng.uniform(0.2, 2.5))  # down for a while: one or two failed attempts
    finally:
        dovecot.start()
    proxy.resume()
    corpus.upload(mailbox, _more_mail(corpus, rng))  # mail keeps coming
    daemon.wait_log("scan recovered", 60, after=mark)
    daemon.wait_for(settled(corpus, db), 60, "every message recorded and labelled")
    assert daemon.stop() == 0
    assert_intact(corpus, mailbox, db)
    assert_clean_log(daemon, mailbox.password)
    failures = [line for line in daemon.lines if "scan failed" in line]
    delays = [int(m.group(1)) for line in failures if (m := RETRY.search(line))]
    assert len(delays) == len(failures), failures
    # Network trouble: the quick backoff (5 s, capped at the poll interval), not the login one.
    assert delays[0] == min(5, POLL), failures


# --------------------------------------------------------------------------- 9: refused logins


LOGIN_WINDOW = 5.0
"""Seconds a refused daemon is watched after its first failure: well past the quick network
retry (5 s, capped at the 2 s poll), so a login failure treated like a network one would
show a second attempt."""


def test_wrong_password_and_expired_oauth2_token_are_retried_slowly(
    mailbox: MailAccount,
    oauth_mailbox: MailAccount,
    introspection: Any,
    tmp_path: Path,
    scenario: Callable[..., Scenario],
    daemons: Callable[..., Daemon],
) -> None:
    # The OAuth2 setup is real: a valid token logs in, so the refusal below is the token's.
    valid = f"valid-token-{os.getpid()}"
    introspection.valid[valid] = oauth_mailbox.user
    good = tmp_path / "good"
    good.mkdir()
    config = scenario(
        "login",
        mail="none",
        proxy=False,
        acct=oauth_mailbox,
        tmp=good,
        imap={"oauth2_token_command": f"echo {valid}"},
    ).config
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 0, proc.stderr

    wrong_password = f"wrong-password-{os.getpid()}"
    expired_token = f"expired-token-{os.getpid()}"
    by_password, by_token = tmp_path / "password", tmp_path / "token"
    by_password.mkdir()
    by_token.mkdir()
    by_password_s = scenario("login", mail="none", tmp=by_password, password=wrong_password)
    by_token_s = scenario(
        "login",
        mail="none",
        acct=oauth_mailbox,
        tmp=by_token,
        imap={"oauth2_token_command": f"echo {expired_token}"},
    )
    password_proxy, token_proxy = by_password_s.proxy, by_token_s.proxy
    assert password_proxy is not None and token_proxy is not None
    password_daemon = daemons(by_password_s.config)
    token_daemon = daemons(by_token_s.config)
    for daemon in (password_daemon, token_daemon):
        daemon.wait_log("scan failed (login)", 30)
    time.sleep(LOGIN_WINDOW)  # watching for a second attempt: there must be none

    assert password_proxy.connections == 1 and password_proxy.count(b" LOGIN ") == 1
    assert token_proxy.connections == 1 and token_proxy.count(b"AUTHENTICATE XOAUTH2") == 1
    for daemon, user, secret in (
        (password_daemon, mailbox.user, wrong_password),
        (token_daemon, oauth_mailbox.user, expired_token),
    ):
        failures = [line for line in daemon.lines if "scan failed" in line]
        assert len(failures) == 1, daemon.log  # one clear line per attempt
        assert user in failures[0] and "refused" in failures[0]
        # Slow backoff: 5 min, doubling up to an hour: at most 5 attempts in the first hour.
        match = RETRY.search(failures[0])
        assert match and int(match.group(1)) >= 300, failures[0]
        assert daemon.stop() == 0
        assert_clean_log(daemon, secret)


@pytest.mark.soak
def test_wrong_password_with_idle_is_retried_slowly_too(
    scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    s = scenario("login", mail="none", password="wrong-password", schedule={"idle": True})
    proxy = s.proxy
    assert proxy is not None
    daemon = daemons(s.config)
    daemon.wait_log("scan failed (login)", 30)
    daemon.wait_log("IDLE connection failed", 30)
    time.sleep(LOGIN_WINDOW)
    logins = proxy.count(b" LOGIN ")
    assert daemon.stop() == 0
    # At most the scan's and the IDLE connection's first attempt.
    assert logins <= 2, f"{logins} logins in {LOGIN_WINDOW:g} s:\n{daemon.log}"


# --------------------------------------------------------------------------- 6: IDLE dropped


IDLING = b"+ idling\r\n"  # Dovecot's answer to IDLE
IDLE_TIMEOUT = 1  # imap.timeout for these daemons: every round trip is bounded by it


def _idle_daemon(
    scenario: Callable[..., Scenario],
    daemons: Callable[..., Daemon],
    seed: int,
    idle_renew: int | None = None,
) -> tuple[Scenario, FaultProxy, Daemon]:
    """A small mailbox (seeded) and a daemon that scans only when IDLE says so."""
    schedule: dict[str, Any] = {"idle": True, "poll_interval": 3600}  # only IDLE scans
    if idle_renew is not None:
        schedule["idle_renew"] = idle_renew
    s = scenario("idle", seed, mail="small", imap={"timeout": IDLE_TIMEOUT}, schedule=schedule)
    assert s.proxy is not None
    return s, s.proxy, daemons(s.config)


def _labelled(acct: MailAccount, uid: int) -> Callable[[], bool]:
    return lambda: bool(guard_keywords(acct.flags().get(uid, set())))


def _idle_settled(proxy: FaultProxy, daemon: Daemon) -> None:
    """Wait for the first scan and for the IDLE connection to be the only one left."""
    daemon.wait_log("scan:", 30)
    proxy.wait_until(lambda: proxy.count(b" IDLE\r\n") >= 1, 30, "the first IDLE")
    proxy.wait_until(lambda: proxy.live == 1, 10, "the scan's connection closing")


def _idle_drop(
    scenario: Callable[..., Scenario],
    daemons: Callable[..., Daemon],
    how: str,
    notice_within: float,
    idle_renew: int | None = None,
) -> None:
    """Drop the IDLE connection (``cut``: closed; ``stall``: silent, no FIN) and expect the
    daemon to notice within ``notice_within`` seconds, reconnect, and label mail that
    arrives afterwards through the new IDLE connection."""
    s, proxy, daemon = _idle_daemon(scenario, daemons, 0, idle_renew)
    acct = s.acct
    _idle_settled(proxy, daemon)
    dropped = proxy.cut() if how == "cut" else proxy.stall()
    assert dropped == 1
    mark = daemon.wait_log("IDLE connection failed", notice_within)
    daemon.wait_log("IDLE connection restored", 30, after=mark)
    time.sleep(1.0)  # the new IDLE settles in (Dovecot reports an APPEND ~0.5 s later)
    uid = acct.save(make(body=PAYMENT_BODY, subject="after the drop")[0])
    daemon.wait_for(_labelled(acct, uid), 30, "mail labelled through the new IDLE connection")
    assert daemon.stop() == 0
    assert_clean_log(daemon)


def test_silently_dropped_idle_connection_is_noticed_at_its_renewal(
    scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    # schedule.idle_renew bounds it: the renewal's round trip fails within imap.timeout.
    renew = 2
    bound = renew + 3 * IDLE_TIMEOUT + 2
    _idle_drop(scenario, daemons, "stall", bound, idle_renew=renew)


def test_idle_connection_closed_by_the_network_is_replaced_at_once(
    scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    # The renewal is a minute away: only noticing the close itself can pass this.
    _idle_drop(scenario, daemons, "cut", 3, idle_renew=60)


@pytest.mark.soak
@pytest.mark.parametrize("how", ["stall", "cut"])
def test_dropped_idle_connection_is_replaced_at_the_default_renewal(
    how: str, scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    from guard.config import ScheduleSettings

    default_renew = ScheduleSettings().idle_renew
    bound = default_renew + 3 * IDLE_TIMEOUT + 30
    _idle_drop(scenario, daemons, how, notice_within=bound)


@pytest.mark.soak
def test_mail_arriving_while_idle_reconnects_is_scanned_at_once(
    mailbox: MailAccount, scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    _s, proxy, daemon = _idle_daemon(scenario, daemons, 1, idle_renew=2)
    _idle_settled(proxy, daemon)
    assert proxy.stall() == 1  # noticed at the renewal, then retried after 5 s
    mark = daemon.wait_log("IDLE connection failed", 30)
    uid = mailbox.save(make(body=PAYMENT_BODY, subject="while IDLE was down")[0])
    daemon.wait_log("IDLE connection restored", 30, after=mark)
    daemon.wait_for(_labelled(mailbox, uid), 5, "the mail that came meanwhile labelled")
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- 7: SMTP at digest time


SMTP_TIMEOUT = 2
SMTP_FAULTS = ["down", "refused", "hangs", "cut"]


DIGEST = {
    "to": "alex@personal.example",
    "from": "guard@work.example",
    "time": "00:00",
    "timezone": "UTC",
}


def _digest_rows(db: Path) -> list[tuple[str, int, str | None, str]]:
    return [
        (status, attempts, error, msgid)
        for status, attempts, error, msgid in db_query(
            db, "select status, attempts, last_error, message_id from digest order by id"
        )
    ]


@pytest.mark.seeds(fast=4, soak=24)
def test_digest_stays_pending_through_smtp_faults_then_is_sent_once(
    seed: int,
    smtp_sink_factory: Callable[..., SmtpSink],
    scenario: Callable[..., Scenario],
) -> None:
    sink = smtp_sink_factory(auth=True)  # AUTH without STARTTLS: plain SMTP on loopback
    s = scenario("smtp", seed, mail="small", smtp=sink)
    rng, proxy, config_path, db = s.rng, s.proxy, s.config, s.db
    assert proxy is not None
    assert scan_once(config_path) is None
    fault = SMTP_FAULTS[seed % len(SMTP_FAULTS)]  # every fault within the first four seeds
    # Anywhere before the end of the data; the end itself is dropped unsent, so the server
    # never has the whole message (a lost "250" after it is the one window in which SMTP
    # allows a duplicate: see guard/reports/digest.py _send_rows).
    pattern = rng.choice([b"EHLO", b"AUTH", b"MAIL FROM", b"RCPT TO", b"DATA\r\n", b"\r\n.\r\n"])
    reply_bytes = None if b"." in pattern else rng.choice([None, 0, 3])
    rules: list[CutRule] = []

    def inject() -> None:
        if fault == "down":
            sink.stop()  # the proxy still accepts, and closes at once: the server died
        elif fault == "refused":
            proxy.refuse()
        elif fault == "hangs":
            proxy.stall_new()  # TCP accepted, not a byte of greeting: a hung server
        else:
            rules.append(proxy.cut_on(pattern, reply_bytes=reply_bytes, ignore_case=True))

    config = load_config(config_path)
    store = st.Store(config.store.url)
    try:
        inject()
        outcome = dg.run_digest(store, config)
        assert not outcome.ok, f"{fault}: sent anyway"
        failures = 1 + rng.randrange(2)
        for _ in range(failures - 1):
            inject()
            dg.send_pending(store, config)  # the next poll retries, still failing
        assert all(rule.fired.is_set() for rule in rules), f"{pattern!r} never sent"
        rows = _digest_rows(db)
        assert [(status, attempts) for status, attempts, _e, _m in rows] == [("pending", failures)]
        error = rows[0][2] or ""
        assert error and "\n" not in error and len(error) < 300, error
        assert sink.password not in error and sink.messages == []

        if fault == "down":
            sink.start()
        proxy.resume()
        results = dg.send_pending(store, config)
        assert [r.sent for r in results] == [True] and results[0].error is None
        assert dg.send_pending(store, config) == []  # nothing left to send
    finally:
        store.close()
    delivered = sink.wait_for(1)
    time.sleep(0.2)  # a duplicate would be in flight right behind it
    assert len(sink.messages) == 1
    rows = _digest_rows(db)
    assert [(status, attempts) for status, attempts, _e, _m in rows] == [("sent", failures + 1)]
    assert delivered[0].message["Message-ID"] == rows[0][3]  # the stored digest, not a new one


def test_smtp_server_that_never_answers_is_reported_as_not_answering(
    smtp_sink_factory: Callable[..., SmtpSink], scenario: Callable[..., Scenario]
) -> None:
    s = scenario("smtp", 5, mail="small", smtp=smtp_sink_factory(auth=True))
    proxy, config_path = s.proxy, s.config
    assert proxy is not None
    assert scan_once(config_path) is None
    proxy.stall_new()
    config = load_config(config_path)
    store = st.Store(config.store.url)
    try:
        outcome = dg.run_digest(store, config)
    finally:
        store.close()
    assert [r.sent for r in outcome.results] == [False]
    error = outcome.results[0].error or ""
    assert f"did not answer within {SMTP_TIMEOUT} s" in error, error


@pytest.mark.soak
def test_daemon_keeps_scanning_while_smtp_hangs_and_sends_the_digest_once_back(
    mailbox: MailAccount,
    smtp_sink_factory: Callable[..., SmtpSink],
    scenario: Callable[..., Scenario],
    daemons: Callable[..., Daemon],
) -> None:
    sink = smtp_sink_factory(auth=True)
    s = scenario("smtp", 7, mail="small", smtp=sink)
    proxy = s.proxy
    assert proxy is not None
    proxy.stall_new()
    daemon = daemons(s.config)
    mark = daemon.wait_log("not sent", 60)  # the missed digest, caught up after the first scan
    uid = mailbox.save(make(body=PAYMENT_BODY, subject="while SMTP hangs")[0])
    daemon.wait_for(_labelled(mailbox, uid), 60, "new mail labelled while SMTP hangs")
    proxy.resume()
    sent = daemon.wait_log("sent to alex@personal.example", 60, after=mark)
    scans = daemon.count("scan:")
    daemon.wait_for(lambda: daemon.count("scan:") >= scans + 2, 30, "two more polls")
    assert daemon.stop() == 0
    assert len(sink.messages) == 1, daemon.lines[sent:]
    rows = _digest_rows(s.db)
    assert [status for status, *_rest in rows] == ["sent"]
    assert_clean_log(daemon, sink.password)


# --------------------------------------------------------------------------- 8: locked, full


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock on ``db`` from this process, as another program would."""
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        yield con
        con.execute("ROLLBACK")
    finally:
        con.close()


@pytest.mark.parametrize("cause", ["disk full", pytest.param("locked", marks=pytest.mark.soak)])
def test_store_unwritable_at_scan_start_is_one_clear_line_and_changes_nothing(
    cause: str, mailbox: MailAccount, small_disk: Path, scenario: Callable[..., Scenario]
) -> None:
    s = scenario("unwritable", 3, proxy=False, db=small_disk / DB_NAME, create_store=True)
    corpus, config, db = s.corpus, s.config, s.db
    before = snapshot(mailbox)
    with contextlib.ExitStack() as stack:
        if cause == "locked":
            stack.enter_context(exclusive_lock(db))
        else:
            # Room for the WAL and its index to open, not for the first row.
            stack.enter_context(fill_disk(small_disk, leave=38_000))
        proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 1, proc.stderr
    assert snapshot(mailbox) == before  # nothing labelled, copied, flagged
    assert db_count(db) == 0
    assert scan_once(config) is None
    assert_intact(corpus, mailbox, db)
    assert_one_clear_line(proc.stderr, "database")


@pytest.mark.seeds(fast=2, soak=10)
def test_store_locked_for_a_while_mid_scan_is_waited_for(
    seed: int, mailbox: MailAccount, scenario: Callable[..., Scenario]
) -> None:
    s = scenario("lock", seed, proxy=False, create_store=True)
    corpus, rng, config, db = s.corpus, s.rng, s.config, s.db
    at, hold = rng.randint(1, len(corpus.mails) - 30), rng.uniform(0.2, 2.0)
    held = threading.Event()

    def lock_midway() -> None:
        deadline = time.monotonic() + 60
        while db_count(db) < at and time.monotonic() < deadline:
            time.sleep(0.005)
        with exclusive_lock(db):
            held.set()
            time.sleep(hold)  # well inside the guard's 10 s busy timeout

    locker = threading.Thread(target=lock_midway, daemon=True)
    locker.start()
    proc = run_cli("scan", "--config", str(config))
    locker.join(timeout=60)
    assert held.is_set(), "the lock was never taken"
    assert proc.returncode == 0, proc.stderr
    assert_intact(corpus, mailbox, db)


@pytest.mark.soak
@pytest.mark.seeds(fast=1, soak=4)
def test_store_locked_past_the_busy_timeout_mid_scan(
    seed: int, mailbox: MailAccount, scenario: Callable[..., Scenario]
) -> None:
    s = scenario("longlock", seed, proxy=False, create_store=True)
    corpus, rng, config, db = s.corpus, s.rng, s.config, s.db
    at = rng.randint(1, len(corpus.mails) - 30)
    release = threading.Event()
    held = threading.Event()

    def lock_midway() -> None:
        while db_count(db) < at and not release.is_set():
            time.sleep(0.005)
        with exclusive_lock(db):
            held.set()
            release.wait(120)

    locker = threading.Thread(target=lock_midway, daemon=True)
    locker.start()
    try:
        proc = run_cli("scan", "--config", str(config))
    finally:
        release.set()
        locker.join(timeout=60)
    assert held.is_set(), "the lock was never taken"
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith("database is locked"), proc.stderr
    assert_no_partial_state(corpus, mailbox, db)
    assert run_cli("scan", "--config", str(config)).returncode == 0
    assert_intact(corpus, mailbox, db)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs of its own, for filling up (needs root, or CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


@contextlib.contextmanager
def fill_disk(disk: Path, leave: int) -> Iterator[None]:
    """Fill ``disk`` so that about ``leave`` bytes stay free; free it all again after."""
    vfs = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(vfs.f_bavail * vfs.f_frsize - leave, 0))
    try:
        yield
    finally:
        filler.unlink()


@pytest.mark.seeds(fast=3, soak=20)
def test_disk_full_mid_scan_then_space_returns(
    seed: int, mailbox: MailAccount, small_disk: Path, scenario: Callable[..., Scenario]
) -> None:
    s = scenario("disk", seed, proxy=False, db=small_disk / DB_NAME, create_store=True)
    corpus, rng, config, db = s.corpus, s.rng, s.config, s.db
    # From too little to open the store to enough for most of the scan, log-uniform.
    leave = int(10 ** rng.uniform(math.log10(16e3), 6))
    with fill_disk(small_disk, leave):
        proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 1, f"the scan fitted in {leave} bytes: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if "inbox-guard: error:" in line]
    assert len(error) == 1 and len(error[0]) < 300, proc.stderr
    assert "disk is full" in error[0] or "cannot open the store" in error[0], error[0]
    assert_no_partial_state(corpus, mailbox, db)
    assert scan_once(config) is None
    assert_intact(corpus, mailbox, db)


# --------------------------------------------------------------------------- 10: poison messages

POISON_MARK = "Zq7poison"  # in every poison message; must never reach the daemon's log


def _poison_raws(number: int) -> list[tuple[str, bytes]]:
    """(Message-ID as the snapshot reads it, bytes) of messages whose values a database
    refuses as they are; every one parses cleanly (nothing about them is "unchecked")."""
    head = (
        f"To: {FREELANCER}\r\nDate: Tue, 1 Sep 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    ).encode()
    body = f"\r\nThanks, see you on Monday. {POISON_MARK}\r\n".encode()
    long_id = "p" * 1200 + f".{number}@poison.example"
    cases = [
        # a subject whose encoded word decodes to a NUL (PostgreSQL refuses NUL in text)
        (
            b"From: Ana <ana@poison.example>\r\n",
            b"Subject: =?utf-8?q?Hello=00World_Zq7poison?=\r\n",
        ),
        # a display name over 998 characters (longer than the column: refused on PostgreSQL)
        (
            b'From: "' + b"Client " * 160 + POISON_MARK.encode() + b'" <c@poison.example>\r\n',
            b"Subject: Budget\r\n",
        ),
        # control characters, DEL and a C1 control in a subject and a name
        (
            b"From: =?utf-8?q?B=1B[31mob=7F=C2=9B?= <bob@poison.example>\r\n",
            b"Subject: =?utf-8?q?a=01b=08c_Zq7poison?=\r\n",
        ),
        # an encoded word that decodes to lone surrogates (not encodable as UTF-8)
        (
            b"From: Dan <dan@poison.example>\r\n",
            b"Subject: =?utf-16-le?b?ANhBAADc?= Zq7poison\r\n",
        ),
    ]
    out = []
    for i, (sender, subject) in enumerate(cases):
        msgid = long_id if i == 1 else f"poison.{number}.{i}@poison.example"
        out.append((msgid, sender + subject + f"Message-ID: <{msgid}>\r\n".encode() + head + body))
    return out


def _store_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import sqlalchemy as sa

    try:
        return rows(url, sql)
    except sa.exc.SQLAlchemyError:  # no tables yet, or locked for a moment
        return []


@pytest.mark.seeds(fast=1, soak=4)
def test_poison_message_in_the_middle_of_a_batch(
    seed: int, store_url: str, scenario: Callable[..., Scenario], daemons: Callable[..., Daemon]
) -> None:
    """A few messages whose values the database refuses as they are (a NUL, a display
    name over 998 characters, control characters, lone surrogates), among ordinary mail in
    the daemon's batches: every message is recorded, the ones after the poison are judged
    and labelled, the daemon keeps working (new mail, more poison) and logs no crash,
    traceback or mail text."""
    url = store_url
    s = scenario("poison", seed, mail="none", proxy=False, store={"url": url})
    rng, config, mailbox = s.rng, s.config, s.acct
    corpus = build_corpus(rng, f"p{seed}", risky_each=1, quiet=2, singles=30)
    inbox = corpus.in_folder("INBOX")
    poisons = _poison_raws(1)
    # Poison early in the first batches (25 messages each), before risky replies.
    where = sorted(rng.sample(range(1, min(len(inbox), 40)), len(poisons)))
    for (msgid, raw), at in zip(reversed(poisons), reversed(where), strict=True):
        thread = corpus.new_thread("poison")
        mail = Mail("INBOX", msgid, raw, frozenset(), thread.number)
        corpus.mails.insert(corpus.mails.index(inbox[at]), mail)
    corpus.upload(mailbox)

    def recorded() -> int:
        rows = _store_rows(
            url,
            "select count(*), sum(case when label_pending then 1 else 0 end) from message",
        )
        undone = _store_rows(url, "select count(*) from label_copy where not done")
        if not rows or not undone:
            return -1
        count, pending = rows[0]
        return int(count) if not pending and not undone[0][0] else -1

    daemon = daemons(config)
    daemon.wait_for(lambda: recorded() == len(corpus.mails), 90, "every message recorded")
    snap = snapshot(mailbox)
    problems = _check_mail(corpus, snap, final=True) + _check_copies(corpus, snap, final=True)
    assert not problems, "after the first scan:\n  " + "\n  ".join(problems[:20])

    # The daemon goes on: more poison, then a risky message after it in the same batch.
    more = _poison_raws(2)
    thread = corpus.new_thread("poison")
    for msgid, raw in more:
        corpus.mails.append(Mail("INBOX", msgid, raw, frozenset(), thread.number))
    risky = corpus.message(corpus.new_thread("payment"), "INBOX", PAYMENT_BODY, "payment")
    corpus.upload(mailbox, [*corpus.mails[-len(more) - 1 : -1], risky])
    daemon.wait_for(lambda: recorded() == len(corpus.mails), 60, "the new mail recorded")
    snap = snapshot(mailbox)
    problems = _check_mail(corpus, snap, final=True) + _check_copies(corpus, snap, final=True)
    assert not problems, "after more poison:\n  " + "\n  ".join(problems[:20])
    assert daemon.stop() == 0
    assert_clean_log(daemon, mailbox.password, POISON_MARK, "[SQL", "[parameters")
    assert daemon.count("crashed") == 0 and daemon.count("scan failed") == 0, daemon.log
    uids = [int(u) for (u,) in _store_rows(url, "select uid from message where folder = 'INBOX'")]
    assert sorted(uids) == [s.uid for s in snap["INBOX"]]
    # Stored as every database takes them: no NUL or escape, names fitted to the column.
    for name, subject in _store_rows(url, "select sender_name, subject from message"):
        assert not {"\x00", "\x1b", "\x7f"} & set(name + subject) and len(name) <= 998
