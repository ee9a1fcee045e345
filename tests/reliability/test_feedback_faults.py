"""Faults during the feedback put-back (issue 15): kill -9 and cut connections at each step.

The user's corrections are the one place the guard moves or removes mail (see
``guard/service/feedback.py``): a message dropped into ``Guard/Safe`` or ``Guard/Report``
is recorded, then put back where it came from by ``UID MOVE`` (a copy is removed by
``UID STORE +FLAGS \\Deleted`` and ``UID EXPUNGE``), and the labels of a thread marked safe
are taken away (``UID STORE -FLAGS``, the guard's copies in label folders expunged).

Each scenario starts from the small seeded mailbox of ``test_faults.py``, scanned once and
labelled (keywords and folders, on Dovecot). Then the user, through a second IMAP
connection, changes a few flags and moves or copies 1-3 labelled messages (INBOX or Sent)
into Guard/Safe and one harmless message into Guard/Report (the mix chosen by the seed).
The guard's next scan, through the fault proxy, is interrupted at a seeded command among
``UID MOVE``, ``UID EXPUNGE``, ``UID STORE``, ``UID FETCH``, ``UID SEARCH`` and
``CREATE``: frozen there and SIGKILLed (``inbox-guard scan`` in a subprocess), or its
connection cut; once or twice, then a clean scan. The occurrence of the command is chosen
among all of them: a fault-free twin of the scenario (another Dovecot user, the same
mailbox and corrections) counts them first.

Checked, through another IMAP connection and the SQLite file, as a user would:

- right after each fault: no message lost or doubled (each moved message exactly once in
  its folder, Guard/Safe and Guard/Report taken together; every other one exactly once
  where it was), ``PRAGMA integrity_check`` ok;
- after the clean run: every message exactly once in its folder, with its flags as the
  user left them (``\\Seen`` neither gained nor lost, other clients' keywords kept);
  Guard/Safe and Guard/Report empty; no guard keyword and no label-folder copy left on a
  thread marked safe; the reported message carries ``$GuardReported`` and has exactly one
  copy in ``Guard/Reported``; every other message labelled as before; one ``feedback`` row
  per corrected message (kind and way as done), no ``feedback_move`` row with done = 0,
  the store's UID of every message the one it has on the server;
- a further scan changes nothing (same UIDs, flags, folders and rows).

Seeds and the soak switch: ``conftest.py`` (``-k seed3`` replays one; ``INBOX_GUARD_SEED``
shifts them). A scenario exposing a bug in ``guard/`` is marked ``xfail(strict=True)``
with the bug in one line until the fix lands.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.cli import CLI, run_cli
from support.proxy import CutRule
from support.servers import MailAccount
from test_faults import (
    Corpus,
    Mail,
    Scenario,
    Snapshot,
    db_count,
    db_query,
    guard_keywords,
    scan_once,
    scenario,
    snapshot,
    snapshot_folder,
)

__all__ = ["scenario"]  # the fixture, shared with test_faults

SAFE, REPORT = "Guard/Safe", "Guard/Report"
FEEDBACK_FOLDERS = (SAFE, REPORT)
REPORTED_KEYWORD, REPORTED_FOLDER = "$GuardReported", "Guard/Reported"
OTHER_KEYWORD = "$Work"
# The commands of a put-back and of what follows it (labels taken away or added).
STEPS = (b"UID MOVE", b"UID EXPUNGE", b"UID STORE", b"UID FETCH", b"UID SEARCH", b"CREATE")
FAULT_TIMEOUT = 60.0


# --------------------------------------------------------------------------- the user's side


@dataclass
class Correction:
    mail: Mail
    kind: str  # "safe" or "report"
    how: str  # "move" or "copy"

    @property
    def folder(self) -> str:
        return SAFE if self.kind == "safe" else REPORT


@dataclass
class Plan:
    """What the user did after the first scan, and the mailbox they expect afterwards."""

    corrections: list[Correction]
    flags: dict[tuple[str, str], frozenset[str]]  # (folder, Message-ID) -> the user's flags
    labelled: Snapshot  # the mailbox right after the first scan
    safe_threads: set[int] = field(default_factory=set)
    unseen: bool = False  # the reported message is one the guard had not recorded

    @property
    def reported(self) -> Mail:
        return next(c.mail for c in self.corrections if c.kind == "report")


def _uids_by_id(client: Any, folder: str) -> dict[str, int]:
    client.select_folder(folder)
    return {s.msgid: s.uid for s in snapshot_folder(client, folder)}


def user_corrects(s: Scenario, key: str, *, unseen: str | None = None) -> Plan:
    """The first scan (clean), then the user's corrections, chosen by ``key``: 1-3
    labelled messages of INBOX or Sent into Guard/Safe (the first by MOVE, others by MOVE
    or COPY), one harmless single message into Guard/Report (MOVE or COPY); on each, first
    a flag change of the kind a mail client makes (\\Seen toggled, \\Flagged, ``$Work``).
    The same for the same key (:func:`fault_free_twin` replays it on a twin mailbox).

    ``unseen`` ("move" or "copy"): instead, new mail arrives after the first scan and the
    user reports it that way before the guard has seen it (no other correction)."""
    corpus, acct = s.corpus, s.acct
    rng = random.Random(f"user-{key}")
    error = scan_once(s.config)
    assert error is None, f"the first scan failed: {error}"
    labelled = snapshot(acct)
    assert SAFE in labelled and REPORT in labelled, "the feedback folders were not created"
    was = {(f, x.msgid): x.flags for f in ("INBOX", "Sent") for x in labelled[f]}
    flagged = [m for m in corpus.mails if guard_keywords(was[(m.folder, m.msgid)])]
    singles = [
        m
        for m in corpus.in_folder("INBOX")
        if len(corpus.threads[m.thread].ids) == 1 and not corpus.threads[m.thread].risks
    ]
    assert flagged and singles, "the seeded mailbox has nothing to correct"
    chosen = rng.sample(flagged, min(len(flagged), rng.randint(1, 3)))
    corrections = [
        Correction(m, "safe", "move" if i == 0 else rng.choice(["move", "move", "copy"]))
        for i, m in enumerate(chosen)
    ]
    corrections.append(Correction(rng.choice(singles), "report", rng.choice(["move", "copy"])))
    if unseen is not None:
        new = corpus.message(corpus.new_thread("single"), "INBOX", "harmless", None)
        corpus.upload(acct, [new])
        corrections = [Correction(new, "report", unseen)]
    flags = {(m.folder, m.msgid): m.flags for m in corpus.mails}
    with acct.session() as client:
        for c in corrections:
            where = (c.mail.folder, c.mail.msgid)
            uid = _uids_by_id(client, c.mail.folder)[c.mail.msgid]
            now = set(flags[where])
            if rng.random() < 0.5:
                now ^= {"\\Seen"}
            if rng.random() < 0.4:
                now.add("\\Flagged")
            if rng.random() < 0.4:
                now.add(OTHER_KEYWORD)
            before = set(flags[where])
            if now - before:
                client.add_flags([uid], sorted(now - before), silent=True)
            if before - now:
                client.remove_flags([uid], sorted(before - now), silent=True)
            flags[where] = frozenset(now)
            if c.how == "move":
                client.move([uid], c.folder)
            else:
                client.copy([uid], c.folder)
    print("corrections:", [(c.kind, c.how, c.mail.folder, c.mail.msgid) for c in corrections])
    plan = Plan(corrections, flags, labelled, unseen=unseen is not None)
    plan.safe_threads = {c.mail.thread for c in corrections if c.kind == "safe"}
    return plan


# --------------------------------------------------------------------------- the checks


def _where(snap: Snapshot, msgid: str, folders: tuple[str, ...]) -> int:
    return sum(1 for f in folders for x in snap.get(f, []) if x.msgid == msgid)


def assert_nothing_lost(corpus: Corpus, plan: Plan, acct: MailAccount, db: Path) -> None:
    """Right after a fault: no message missing or doubled, the store intact."""
    snap = snapshot(acct)
    problems: list[str] = []
    moved = {c.mail.msgid for c in plan.corrections if c.how == "move"}
    copied = {c.mail.msgid for c in plan.corrections if c.how == "copy"}
    for mail in corpus.mails:
        if mail.msgid in moved:
            n = _where(snap, mail.msgid, (mail.folder, *FEEDBACK_FOLDERS))
            if n != 1:
                problems.append(f"moved {mail.msgid}: {n} in {mail.folder} and feedback folders")
            continue
        n = _where(snap, mail.msgid, (mail.folder,))
        if n != 1:
            problems.append(f"{mail.folder} {mail.msgid}: {n} copies")
        if mail.msgid in copied and _where(snap, mail.msgid, FEEDBACK_FOLDERS) > 1:
            problems.append(f"copied {mail.msgid}: more than once in the feedback folders")
    integrity = db_query(db, "pragma integrity_check")
    if integrity != [("ok",)]:
        problems.append(f"integrity_check: {integrity[:3]}")
    assert not problems, "after the fault:\n  " + "\n  ".join(problems[:20])


def expected_keywords(corpus: Corpus, plan: Plan, mail: Mail) -> set[str] | None:
    """The guard keywords ``mail`` must end with (None: at least ``$GuardReported``, and
    the categories the engine found, which the twin shows: a message the guard judges
    after it was reported matches its own report)."""
    if mail.msgid == plan.reported.msgid:
        return None if plan.unseen else {REPORTED_KEYWORD}
    if mail.thread in plan.safe_threads:
        return set()
    before = {x.msgid: x.flags for x in plan.labelled[mail.folder]}
    return guard_keywords(before[mail.msgid])


def expected_copies(corpus: Corpus, plan: Plan) -> dict[str, Counter[str]]:
    """Label folder -> the Message-IDs it must hold (the reported message's copies in
    category folders, when ``plan.unseen``, are left to the comparison with the twin)."""
    thread_of = {m.msgid: m.thread for m in corpus.mails}
    out: dict[str, Counter[str]] = {}
    for folder, seen in plan.labelled.items():
        if folder.startswith("Guard/") and folder not in FEEDBACK_FOLDERS:
            out[folder] = Counter(
                x.msgid for x in seen if thread_of.get(x.msgid) not in plan.safe_threads
            )
    out.setdefault(REPORTED_FOLDER, Counter())[plan.reported.msgid] += 1
    return out


def final_problems(corpus: Corpus, plan: Plan, snap: Snapshot, db: Path) -> list[str]:
    problems: list[str] = []
    for folder in ("INBOX", "Sent"):
        held = Counter(x.msgid for x in snap.get(folder, []))
        want = {m.msgid for m in corpus.in_folder(folder)}
        if set(held) != want or any(n > 1 for n in held.values()):
            problems.append(
                f"{folder}: missing {sorted(want - set(held))[:3]}, unexpected "
                f"{sorted(set(held) - want)[:3]}, twice {[i for i, n in held.items() if n > 1]}"
            )
        by_id = {m.msgid: m for m in corpus.in_folder(folder)}
        for x in snap.get(folder, []):
            mail = by_id.get(x.msgid)
            if mail is None:
                continue
            own = set(x.flags - guard_keywords(x.flags))
            if own != set(plan.flags[(folder, x.msgid)]):
                problems.append(
                    f"{folder} {x.msgid}: flags {sorted(own)}, "
                    f"the user left {sorted(plan.flags[(folder, x.msgid)])}"
                )
            want_kw, got_kw = expected_keywords(corpus, plan, mail), guard_keywords(x.flags)
            if want_kw is None:
                ok, want_text = REPORTED_KEYWORD in got_kw, f"{REPORTED_KEYWORD} among them"
            else:
                ok, want_text = got_kw == want_kw, str(sorted(want_kw))
            if not ok:
                problems.append(
                    f"{folder} {x.msgid} (thread {mail.thread}): guard keywords "
                    f"{sorted(got_kw)}, expected {want_text}"
                )
    for folder in FEEDBACK_FOLDERS:
        if snap.get(folder):
            problems.append(f"{folder} still holds {len(snap[folder])} message(s)")
    copies = expected_copies(corpus, plan)
    for folder in sorted(
        {f for f in snap if f.startswith("Guard/") and f not in FEEDBACK_FOLDERS} | set(copies)
    ):
        got_copies = Counter(x.msgid for x in snap.get(folder, []))
        want_copies = copies.get(folder, Counter())
        if plan.unseen and folder != REPORTED_FOLDER and got_copies[plan.reported.msgid] == 1:
            want_copies[plan.reported.msgid] = 1
        if got_copies != want_copies:
            problems.append(
                f"{folder}: holds {sorted(got_copies.items())[:4]}, "
                f"expected {sorted(want_copies.items())[:4]}"
            )
    problems += store_problems(corpus, plan, snap, db)
    return problems


def store_problems(corpus: Corpus, plan: Plan, snap: Snapshot, db: Path) -> list[str]:
    problems: list[str] = []
    integrity = db_query(db, "pragma integrity_check")
    if integrity != [("ok",)]:
        problems.append(f"integrity_check: {integrity[:3]}")
    rows = db_query(db, "select kind, via, message_id from feedback order by id")
    got = Counter((k, v, (i or "").strip("<>")) for k, v, i in rows)
    want = Counter((c.kind, c.how, c.mail.msgid) for c in plan.corrections)
    if got != want:
        problems.append(f"feedback rows {sorted(got.items())}, expected {sorted(want.items())}")
    open_moves = db_count(db, "select count(*) from feedback_move where not done")
    if open_moves:
        problems.append(f"{open_moves} feedback_move row(s) left with done = 0")
    unapplied = db_count(db, "select count(*) from feedback where not applied")
    if unapplied:
        problems.append(f"{unapplied} feedback row(s) never applied")
    for sql, what in (
        ("select count(*) from message where label_pending", "message(s) waiting for labels"),
        ("select count(*) from label_copy where not done", "label copies not confirmed"),
    ):
        n = db_count(db, sql)
        if n:
            problems.append(f"{n} {what}")
    recorded = db_query(db, "select folder, message_id, uid from message")
    at = Counter((f, (i or "").strip("<>")) for f, i, _u in recorded)
    if sorted(at) != sorted({(m.folder, m.msgid) for m in corpus.mails}) or any(
        n > 1 for n in at.values()
    ):
        problems.append(
            f"message rows: {sorted(k for k, n in at.items() if n > 1)[:3]} twice, "
            f"{len(at)} recorded for {len(corpus.mails)} messages"
        )
    on_server = {(f, x.msgid): x.uid for f in ("INBOX", "Sent") for x in snap.get(f, [])}
    for folder, msgid, uid in recorded:
        key = (folder, (msgid or "").strip("<>"))
        if key in on_server and on_server[key] != uid:
            problems.append(
                f"{folder} {key[1]}: stored at uid {uid}, on the server {on_server[key]}"
            )
    flags = db_query(db, "select thread_id, marked_safe, reported from thread")
    ids = {
        (m or "").strip("<>"): t
        for t, m in db_query(db, "select thread_id, message_id from message")
    }
    marked = {t: (bool(s), bool(r)) for t, s, r in flags}
    for c in plan.corrections:
        safe, reported = marked.get(ids.get(c.mail.msgid, ""), (False, False))
        if (c.kind == "safe" and not safe) or (c.kind == "report" and not reported):
            problems.append(f"the thread of {c.mail.msgid} is not marked {c.kind}")
    return problems


def store_state(db: Path) -> list[object]:
    return [
        db_query(db, "select id, folder, uidvalidity, uid, labels from message order by id"),
        db_query(db, "select id, kind, via, applied from feedback order by id"),
        db_query(db, "select id, done from feedback_move order by id"),
        db_query(db, "select * from label_copy order by 1, 2"),
    ]


def mailbox_state(snap: Snapshot) -> dict[str, list[tuple[int, str, frozenset[str]]]]:
    return {f: sorted((x.uid, x.msgid, x.flags) for x in seen) for f, seen in snap.items()}


def assert_put_back(s: Scenario, plan: Plan, twin: Twin, *, cli: bool) -> None:
    """The clean run (``inbox-guard scan`` when ``cli``, else the same in this process)
    and one more: everything as the user expects, where the fault-free twin ended, and
    stable."""
    if cli:
        proc = run_cli("scan", "--config", s.config)
        assert proc.returncode == 0, f"the clean scan failed: {proc.stderr}"
    else:
        error = scan_once(s.config)
        assert error is None, f"the clean scan failed: {error}"
    snap = snapshot(s.acct)
    problems = final_problems(s.corpus, plan, snap, s.db)
    assert not problems, "after the clean scan:\n  " + "\n  ".join(problems[:20])
    shape = shape_of(snap)
    differ = sorted(f for f in set(shape) | set(twin.shape) if shape.get(f) != twin.shape.get(f))
    assert not differ, f"the mailbox differs from the fault-free twin's in {differ}"
    before_rows = store_state(s.db)
    error = scan_once(s.config)
    assert error is None, f"the further scan failed: {error}"
    assert mailbox_state(snapshot(s.acct)) == mailbox_state(snap), "a further scan changed mail"
    assert store_state(s.db) == before_rows, "a further scan changed the store"


# --------------------------------------------------------------------------- the faults


@dataclass
class Twin:
    """The same scenario without faults: how often each command of :data:`STEPS` came
    in the scan after the corrections, and the mailbox that scan left (per folder, the
    Message-ID and flags of each message, UIDs aside)."""

    counts: Counter[bytes]
    shape: dict[str, list[tuple[str, frozenset[str]]]]


def shape_of(snap: Snapshot) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """Per folder, the Message-ID of each message and, in INBOX and Sent, its flags (those
    of a label-folder copy depend on when it was made)."""
    return {
        f: sorted((x.msgid, x.flags if f in ("INBOX", "Sent") else frozenset()) for x in seen)
        for f, seen in snap.items()
    }


def fault_free_twin(
    scenario: Callable[..., Scenario], s: Scenario, seed: int, key: str, **options: Any
) -> Twin:
    """The same mailbox, corrections and scan replayed, fault-free, on a twin Dovecot user
    (the guard's commands depend only on these): a fault can then be put at any occurrence
    of a command, and the faulted run must end where the twin did."""
    twin_dir = s.tmp / "twin"
    twin_dir.mkdir()
    twin = scenario(
        "feedback-twin", seed, mail="small", acct=s.acct.server.account("twin"), tmp=twin_dir
    )
    assert twin.proxy is not None
    user_corrects(twin, key, **options)
    before = {p: twin.proxy.count(p) for p in STEPS}
    error = scan_once(twin.config)
    assert error is None, f"the fault-free twin scan failed: {error}"
    counts = Counter({p: twin.proxy.count(p) - before[p] for p in STEPS})
    return Twin(counts, shape_of(snapshot(twin.acct)))


def choose_step(rng: random.Random, counts: Counter[bytes]) -> tuple[bytes, int]:
    """A command of the feedback scan and which occurrence of it, any of them (the first
    scan already created the label folders, so the CREATE is Guard/Reported's, and every
    UID MOVE is a put-back)."""
    pattern = rng.choice([p for p in STEPS if counts[p]])
    return pattern, rng.randint(1, counts[pattern])


def scan_killed_at(s: Scenario, rule: CutRule) -> bool:
    """``inbox-guard scan`` in a subprocess, SIGKILLed once ``rule`` has frozen it; False
    when it ended before the command came."""
    proc = subprocess.Popen(
        [*CLI, "scan", "--config", str(s.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + FAULT_TIMEOUT
        while not rule.acted.is_set():
            if proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"the scan never reached {rule.pattern!r}"
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_then_clean_run(
    scenario: Callable[..., Scenario], name: str, seed: int, *, unseen: str | None = None
) -> None:
    """Scenario 1: the scan after the corrections frozen at a seeded command (sent, or run
    and its answer begun) and SIGKILLed there, once or twice; then a clean run."""
    s = scenario(name, seed, mail="small")
    assert s.proxy is not None
    twin = fault_free_twin(scenario, s, seed, f"{name}-{seed}", unseen=unseen)
    plan = user_corrects(s, f"{name}-{seed}", unseen=unseen)
    for attempt in range(s.rng.choice([1, 1, 2])):
        pattern, nth = choose_step(s.rng, twin.counts)
        rule = s.proxy.stall_on(pattern, nth=nth, reply_bytes=s.rng.choice([0, 1]))
        killed = scan_killed_at(s, rule)
        s.proxy.resume()
        print(f"fault {attempt + 1}: kill at {pattern.decode()} #{nth} (killed: {killed})")
        if attempt == 0:
            assert killed, f"{pattern!r} #{nth} never came: the fault was not injected"
        assert_nothing_lost(s.corpus, plan, s.acct, s.db)
        if not killed:
            break
    assert_put_back(s, plan, twin, cli=False)


@pytest.mark.seeds(fast=2, soak=20)
def test_feedback_put_back_survives_kill_9_at_each_step(
    seed: int, scenario: Callable[..., Scenario]
) -> None:
    kill_then_clean_run(scenario, "feedback-kill", seed)


@pytest.mark.seeds(fast=1, soak=20)
def test_feedback_put_back_survives_connection_cuts(
    seed: int, scenario: Callable[..., Scenario]
) -> None:
    """Scenario 2: the connection cut at a seeded command (unsent, sent, or after part of
    the answer), once or twice, each a one-line error; then ``inbox-guard scan``."""
    s = scenario("feedback-cut", seed, mail="small")
    assert s.proxy is not None
    twin = fault_free_twin(scenario, s, seed, f"feedback-cut-{seed}")
    plan = user_corrects(s, f"feedback-cut-{seed}")
    for attempt in range(s.rng.choice([1, 1, 2])):
        pattern, nth = choose_step(s.rng, twin.counts)
        reply = s.rng.choice([None, 0, 1, s.rng.randint(2, 30)])
        rule = s.proxy.cut_on(pattern, nth=nth, reply_bytes=reply)
        error = scan_once(s.config)
        s.proxy.resume()
        print(
            f"fault {attempt + 1}: cut at {pattern.decode()} #{nth}, {reply} reply bytes: {error}"
        )
        if attempt == 0:
            assert rule.fired.is_set(), f"{pattern!r} #{nth} never came: the fault was not injected"
        if rule.fired.is_set():
            assert error is not None, "the scan went on as if nothing was cut"
            assert "\n" not in error and len(error) < 300, error
            assert "lost" in error or "did not answer" in error, error
        assert_nothing_lost(s.corpus, plan, s.acct, s.db)
        if not rule.fired.is_set():
            break
    assert_put_back(s, plan, twin, cli=True)


@pytest.mark.seeds(fast=1, soak=8)
@pytest.mark.parametrize("how", ["move", "copy"])
def test_report_of_mail_the_guard_has_not_seen_survives_kill_9(
    seed: int, how: str, scenario: Callable[..., Scenario]
) -> None:
    """New mail reported (moved or copied into Guard/Report) before any scan saw it: put
    back in INBOX (or the copy removed), recorded once, labelled Reported; kill -9 at a
    seeded step of that scan first."""
    kill_then_clean_run(scenario, f"feedback-unseen-{how}", seed, unseen=how)
