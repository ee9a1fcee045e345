"""What the user taught from the mail client, as the reports show it: ``inbox-guard
feedback`` (listing and ``--forget``), the digest (threads marked safe left out, reported
ones shown, the period's feedback in one line) and ``inbox-guard findings``; and the v3 → v4
migration in place.

Store rows are written directly (as a scan with feedback would have left them), in a real
SQLite file and in PostgreSQL (``store_url``); the commands run as subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.cli import run_cli
from support.configs import raw_config
from support.db import as_version, rows
from support.flagged import add_thread

from guard import reports
from guard import store as st
from guard.config import Config

T0 = datetime(2026, 11, 20, 9, 0)  # naive UTC, as the store keeps times
ACCOUNT = "default"

HOSTILE_SUBJECT = (
    "Invoice <script>alert(1)</script> \x1b[31mRED\x1b[0m \u202egpj.exe \u200b"
    "\x9b2J https://pay.evil.example/login\n#99  2026-01-01T00:00:00Z  fake  safe"
)
HOSTILE_SENDER = "evil\x1b]8;;http://evil.example\x07@x.example"
HOSTILE_NAME = '<img src=x onerror="alert(2)"> \x1b[2J Boss'


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def store(store_url: str) -> Iterator[st.Store]:
    s = st.Store(store_url)
    yield s
    s.close()


def write_cli_config(tmp: Path, url: str, accounts: Sequence[str] = ()) -> Path:
    """A configuration the commands can load (no server is contacted): one ``[imap]``, or
    one ``[[account]]`` per name."""
    if not accounts:
        mailboxes = '[imap]\nhost = "127.0.0.1"\ntls = "none"\nusername = "me"\n'
    else:
        mailboxes = "".join(
            f'[[account]]\nname = "{name}"\n[account.imap]\nhost = "127.0.0.1"\n'
            f'tls = "none"\nusername = "{name}"\n'
            for name in accounts
        )
    return raw_config(tmp, mailboxes + f"[store]\nurl = {json.dumps(url)}\n")


def digest_config(url: str, min_risk: str = "medium") -> Config:
    return Config.model_validate(
        {
            "imap": {"host": "127.0.0.1", "tls": "none", "username": "me"},
            "smtp": {"host": "127.0.0.1", "tls": "none", "port": 2525},
            "digest": {
                "to": "Me <me@home.example>",
                "from": "inbox-guard <guard@work.example>",
                "timezone": "UTC",
            },
            "policy": {"min_risk": min_risk},
            "store": {"url": url},
        }
    )


def add_unflagged(store: st.Store, thread_id: str, subject: str) -> None:
    """A thread of one message the guard found nothing in (risk "none", no category)."""
    add_thread(
        store, thread_id, updated_at=T0, risk="none", subject=subject, messages=[{"findings": []}]
    )
    with store.session() as session:
        thread = st.get_thread(session, ACCOUNT, thread_id)
        assert thread is not None
        thread.categories = thread.labels = ""
        session.add(thread)
        for message in st.thread_messages(session, ACCOUNT, thread_id):
            message.categories = ""
            session.add(message)


def teach(
    store: st.Store,
    kind: str,
    thread_id: str | None,
    *,
    created_at: datetime,
    via: str = "move",
    categories: Sequence[str] = ("off_platform_payment",),
    sender: str = "client@client.example",
    subject: str = "Project budget",
    account: str = ACCOUNT,
    content_hash: str | None = None,
) -> int:
    """A feedback row, and the thread's feedback columns rebuilt from it (as the scan
    does when it records feedback); its id."""
    with store.session() as session:
        row = st.Feedback(
            account=account,
            kind=kind,
            via=via,
            thread_id=thread_id,
            content_hash=content_hash or f"c{thread_id}{kind}{created_at:%H%M%S}",
            sender=sender,
            subject=subject,
            categories=",".join(categories),
            created_at=created_at,
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        pk = row.id
        thread = st.get_thread(session, account, thread_id) if thread_id else None
        if thread is not None:
            st.refresh_thread(session, thread)
    return pk


def write_raw(url: str, sql: str, **params: object) -> None:
    """Write with plain SQL, past the store's cleaning of values on the way in: what the
    reports must cope with even if a row holds it (an older version, another writer)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def feedback_cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = run_cli("feedback", "--config", config, *args)
    return proc.returncode, proc.stdout, proc.stderr


def preview(store: st.Store, url: str, min_risk: str = "medium") -> reports.RenderedDigest:
    return reports.preview(
        store,
        digest_config(url, min_risk),
        since=T0 - timedelta(days=1),
        now=T0 + timedelta(hours=2),
    )


def assert_terminal_safe(text: str) -> None:
    for ch in ("\x1b", "\x9b", "\u202e", "\x07"):
        assert ch not in text, repr(ch)


# --------------------------------------------------------------------------- inbox-guard feedback


def test_feedback_lists_every_account_newest_first_in_text_and_json(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    add_thread(store, "t:paid", updated_at=T0, account="work")
    add_thread(store, "t:scam", updated_at=T0, account="side", categories=("scam",))
    first = teach(store, "safe", "t:paid", created_at=T0, account="work")
    second = teach(
        store, "report", "t:scam", created_at=T0 + timedelta(minutes=5), account="side",
        via="gmail-label", categories=("scam",), subject="Easy money",
    )  # fmt: skip
    third = teach(
        store, "report", None, created_at=T0 + timedelta(minutes=9), account="work",
        via="copy", categories=(), subject="Not seen yet", content_hash="f" * 64,
    )  # fmt: skip
    config = write_cli_config(tmp_path, store_url, accounts=("work", "side"))

    code, out, err = feedback_cli(config)
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines() if line.startswith("#")] == [
        f"#{third}", f"#{second}", f"#{first}",
    ]  # fmt: skip
    assert f"#{first}  2026-11-20T09:00:00Z  work  safe (moved to Guard/Safe)" in out
    assert f"#{second}  2026-11-20T09:05:00Z  side  reported (Gmail label Guard/Report)" in out
    assert "reported (copied to Guard/Report)" in out
    assert "from client@client.example: Project budget" in out
    assert "categories: off_platform_payment  thread t:paid" in out
    assert "thread (message not recorded yet)" in out
    assert out.rstrip().endswith("3 feedback row(s)")

    code, out, err = feedback_cli(config, "--format", "json", "--account", "work")
    assert (code, err) == (0, "")
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [third, first]
    assert listed[1] == {
        "id": first,
        "date": "2026-11-20T09:00:00Z",
        "account": "work",
        "kind": "safe",
        "via": "move",
        "how": "moved to Guard/Safe",
        "sender": "client@client.example",
        "subject": "Project budget",
        "categories": ["off_platform_payment"],
        "thread": "t:paid",
    }
    assert listed[0]["thread"] is None and listed[0]["kind"] == "reported"

    code, out, err = feedback_cli(config, "--account", "nobody")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no account named 'nobody'" in err


def test_feedback_with_none_recorded_says_so(store_url: str, tmp_path: Path) -> None:
    config = write_cli_config(tmp_path, store_url)
    code, out, _ = feedback_cli(config)
    assert (code, out) == (0, "No feedback recorded.\n")
    code, out, _ = feedback_cli(config, "--format", "json")
    assert (code, json.loads(out)) == (0, [])


def test_hostile_sender_and_subject_are_escaped_in_feedback_output(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    add_thread(store, "t:evil", updated_at=T0, subject=HOSTILE_SUBJECT)
    teach(store, "report", "t:evil", created_at=T0, sender=HOSTILE_SENDER, subject=HOSTILE_SUBJECT)
    # the store drops control characters on the way in; the output must not rely on it
    write_raw(
        store_url,
        "UPDATE feedback SET subject = :s, sender = :f",
        s=HOSTILE_SUBJECT,
        f=HOSTILE_SENDER,
    )
    config = write_cli_config(tmp_path, store_url)

    code, out, _ = feedback_cli(config)
    assert code == 0
    assert_terminal_safe(out)
    assert "\\x1b[31mRED\\x1b[0m" in out and "\\u202egpj.exe \\u200b" in out  # as escapes
    assert "evil\\x1b]8;;http://evil.example\\x07@x.example" in out
    lines = out.splitlines()
    # the subject's line break made no entry of its own
    assert len([line for line in lines if line.startswith("#")]) == 1
    assert len([line for line in lines if line.startswith("    from ")]) == 1
    assert "#99 2026-01-01T00:00:00Z fake safe" in out and not any(
        line.startswith("#99") for line in lines
    )

    code, out, _ = feedback_cli(config, "--format", "json")
    assert code == 0
    assert_terminal_safe(out)
    assert "\n" not in out.rstrip("\n")
    (row,) = json.loads(out)
    assert (row["subject"], row["sender"]) == (HOSTILE_SUBJECT, HOSTILE_SENDER)  # exact value


# --------------------------------------------------------------------------- --forget


def test_forget_a_safe_mark_brings_the_thread_back_for_relabelling(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    add_thread(store, "t:paid", updated_at=T0, messages=[{}, {"subject": "Re: budget"}])
    add_thread(store, "t:other", updated_at=T0)
    safe = teach(store, "safe", "t:paid", created_at=T0)
    kept = teach(store, "safe", "t:other", created_at=T0)
    assert rows(store_url, "SELECT marked_safe FROM thread WHERE thread_id = 't:paid'") == [(True,)]
    config = write_cli_config(tmp_path, store_url)

    code, out, err = feedback_cli(config, "--forget", str(safe))
    assert (code, err) == (0, "")
    assert out == (
        f"Forgot feedback #{safe} (safe, Project budget); thread t:paid: 2 message(s) "
        "will be relabelled at the next scan.\n"
    )
    # kept for the record, marked forgotten; no longer listed, and not forgotten twice
    assert rows(
        store_url, "SELECT id, forgotten_at IS NOT NULL, applied FROM feedback ORDER BY id"
    ) == [(safe, True, False), (kept, False, False)]
    code, out, _ = feedback_cli(config, "--format", "json")
    assert [r["id"] for r in json.loads(out)] == [kept]
    code, out, err = feedback_cli(config, "--forget", str(safe))
    assert (code, out) == (2, "") and f"no feedback with id {safe} " in err
    assert rows(
        store_url,
        "SELECT marked_safe, reported, safe_categories FROM thread WHERE thread_id = 't:paid'",
    ) == [(False, False, "")]
    pending = rows(store_url, "SELECT thread_id, label_pending FROM message ORDER BY id")
    assert pending == [("t:paid", True), ("t:paid", True), ("t:other", False)]
    assert rows(store_url, "SELECT marked_safe FROM thread WHERE thread_id = 't:other'") == [
        (True,)
    ]


def test_forget_a_later_report_leaves_the_earlier_safe_mark(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    add_thread(store, "t:paid", updated_at=T0)
    teach(store, "safe", "t:paid", created_at=T0)
    report = teach(store, "report", "t:paid", created_at=T0 + timedelta(hours=1))
    assert rows(store_url, "SELECT marked_safe, reported FROM thread") == [(False, True)]
    config = write_cli_config(tmp_path, store_url)

    code, out, _ = feedback_cli(config, "--forget", str(report), "--format", "json")
    assert code == 0
    done = json.loads(out)
    assert (done["forgotten"]["id"], done["forgotten"]["kind"], done["relabel"]) == (
        report, "reported", 1,
    )  # fmt: skip
    assert rows(store_url, "SELECT marked_safe, reported, safe_categories FROM thread") == [
        (True, False, "off_platform_payment")
    ]


def test_forget_feedback_on_a_message_never_recorded(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    pk = teach(store, "report", None, created_at=T0, content_hash="e" * 64)
    config = write_cli_config(tmp_path, store_url)
    code, out, _ = feedback_cli(config, "--forget", str(pk))
    assert code == 0
    assert out == (
        f"Forgot feedback #{pk} (reported, Project budget); it was linked to no recorded thread.\n"
    )
    assert rows(store_url, "SELECT COUNT(*) FROM feedback WHERE forgotten_at IS NULL") == [(0,)]


def test_forget_an_unknown_id_is_one_line_and_changes_nothing(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    add_thread(store, "t:paid", updated_at=T0, account="work")
    pk = teach(store, "safe", "t:paid", created_at=T0, account="work")
    config = write_cli_config(tmp_path, store_url, accounts=("work", "side"))

    code, out, err = feedback_cli(config, "--forget", str(pk + 1000))
    assert (code, out) == (2, "")
    assert err == (
        f"inbox-guard: error: no feedback with id {pk + 1000} (`inbox-guard feedback` lists them)\n"
    )
    # another account's row is not found either
    code, out, err = feedback_cli(config, "--forget", str(pk), "--account", "side")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and f"no feedback with id {pk} of account 'side'" in err
    assert rows(store_url, "SELECT COUNT(*) FROM feedback WHERE forgotten_at IS NULL") == [(1,)]
    assert rows(store_url, "SELECT marked_safe FROM thread") == [(True,)]
    assert rows(store_url, "SELECT COUNT(*) FROM message WHERE label_pending") == [(0,)]


# --------------------------------------------------------------------------- the digest


def test_digest_leaves_out_threads_marked_safe_and_shows_reported_ones(
    store: st.Store, store_url: str
) -> None:
    # marked safe for everything it was flagged for, not rescanned yet: still "high"
    add_thread(store, "t:safe", updated_at=T0, subject="Trusted client pays by wire")
    teach(store, "safe", "t:safe", created_at=T0 + timedelta(minutes=1))
    # marked safe for one of its two categories: shown for the other only
    add_thread(
        store, "t:half", updated_at=T0, subject="Half safe",
        categories=("off_platform_payment", "off_platform_contact"),
        messages=[{"findings": [
            ("payment.pay-directly", "off_platform_payment", "I pay you by wire as always"),
            ("contact.messenger", "off_platform_contact", "text me on WhatsApp instead"),
        ]}],
    )  # fmt: skip
    teach(store, "safe", "t:half", created_at=T0 + timedelta(minutes=2))
    # reported, below min_risk ("low" < "medium"), and not flagged at all
    add_thread(store, "t:low", updated_at=T0, risk="low", subject="Low but reported")
    teach(store, "report", "t:low", created_at=T0 + timedelta(minutes=3))
    add_unflagged(store, "t:none", subject="Task scam")
    teach(store, "report", "t:none", created_at=T0 + timedelta(minutes=4), categories=())
    # an ordinary risky thread, and a low one nobody reported
    add_thread(store, "t:risky", updated_at=T0, subject="Pay me on PayPal")
    add_thread(store, "t:quiet", updated_at=T0, risk="low", subject="Low and quiet")

    rendered = preview(store, store_url)
    d = rendered.content
    shown = {t.subject: t for t in d.threads}
    assert set(shown) == {"Pay me on PayPal", "Half safe", "Low but reported", "Task scam"}
    half = shown["Half safe"]
    assert half.categories == ("off_platform_contact",)
    assert [m.evidence for m in half.messages] == [("text me on WhatsApp instead",)]
    assert [x.rule for x in half.explanations] == ["contact.messenger"]
    assert "pay you by wire" not in rendered.text
    assert (shown["Low but reported"].reported, shown["Low but reported"].risk_title) == (
        True, "Low risk",
    )  # fmt: skip
    assert (shown["Task scam"].reported, shown["Task scam"].risk_title) == (True, "Not flagged")
    assert not shown["Pay me on PayPal"].reported
    order = [t.subject for t in d.threads]
    assert set(order[:2]) == {"Pay me on PayPal", "Half safe"}  # riskiest first
    assert order[2:] == ["Low but reported", "Task scam"]
    assert dict(d.by_level) == {"high": 2, "low": 1}
    assert dict((c, n) for c, _, n in d.by_category)["off_platform_payment"] == 2

    summary = "You marked 2 threads safe and reported 2."
    for body in (rendered.text, rendered.html):
        assert summary in body
        assert "Trusted client pays by wire" not in body
        assert "Low and quiet" not in body
    assert rendered.text.count("Reported by you.") == 2
    assert rendered.html.count(">Reported by you</span>") == 2
    assert "[NOT FLAGGED] Task scam" in rendered.text


def test_digest_feedback_line_counts_threads_and_is_left_out_without_feedback(
    store: st.Store, store_url: str
) -> None:
    add_thread(store, "t:risky", updated_at=T0, subject="Pay me on PayPal")
    rendered = preview(store, store_url)
    for body in (rendered.text, rendered.html):
        assert "You marked" not in body and "You reported" not in body

    # one thread marked safe twice, a report outside the period
    add_thread(store, "t:safe", updated_at=T0 - timedelta(days=3), subject="Old")
    teach(store, "safe", "t:safe", created_at=T0, categories=("off_platform_payment",))
    teach(store, "safe", "t:safe", created_at=T0 + timedelta(minutes=1), categories=("scam",))
    teach(store, "report", "t:risky", created_at=T0 - timedelta(days=2))
    rendered = preview(store, store_url)
    assert "You marked 1 thread safe." in rendered.text
    assert "You marked 1 thread safe." in rendered.html
    assert "reported" not in rendered.content.feedback_summary

    report = teach(store, "report", "t:risky", created_at=T0 + timedelta(minutes=2))
    assert "You marked 1 thread safe and reported 1." in preview(store, store_url).text

    with store.session() as session:  # a forgotten report counts no more
        assert st.forget_feedback(session, report) is not None
    assert "You marked 1 thread safe." in preview(store, store_url).text


def test_digest_shows_a_thread_reported_in_the_period_though_unchanged_in_it(
    store: st.Store, store_url: str
) -> None:
    add_thread(store, "t:old", updated_at=T0 - timedelta(days=5), risk="low", subject="Old scam")
    teach(store, "report", "t:old", created_at=T0)
    rendered = preview(store, store_url)
    assert [t.subject for t in rendered.content.threads] == ["Old scam"]
    assert rendered.content.threads[0].reported


def test_digest_escapes_a_hostile_reported_thread(store: st.Store, store_url: str) -> None:
    add_unflagged(store, "t:evil", subject=HOSTILE_SUBJECT)
    teach(store, "report", "t:evil", created_at=T0, sender=HOSTILE_SENDER, subject=HOSTILE_SUBJECT)
    write_raw(store_url, "UPDATE thread SET subject = :s", s=HOSTILE_SUBJECT)
    write_raw(
        store_url,
        "UPDATE message SET subject = :s, sender = :f, sender_name = :n",
        s=HOSTILE_SUBJECT, f=HOSTILE_SENDER, n=HOSTILE_NAME,
    )  # fmt: skip
    rendered = preview(store, store_url)
    assert len(rendered.content.threads) == 1
    for body in (rendered.text, rendered.html):
        assert_terminal_safe(body)
        assert "https://pay.evil.example" not in body  # defanged
        assert "hxxps://pay[.]evil[.]example" in body
    assert "<script>" not in rendered.html and "<img" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert "&lt;img src=x onerror=" in rendered.html
    assert "\u202e" not in rendered.subject


# --------------------------------------------------------------------------- findings


def test_findings_leave_out_threads_marked_safe_and_mark_reported_ones(
    store: st.Store, store_url: str, tmp_path: Path
) -> None:
    add_thread(store, "t:safe", updated_at=T0, subject="Trusted client pays by wire")
    teach(store, "safe", "t:safe", created_at=T0)
    add_thread(store, "t:low", updated_at=T0, risk="low", subject="Low but reported")
    teach(store, "report", "t:low", created_at=T0)
    add_thread(store, "t:risky", updated_at=T0, subject="Pay me on PayPal")
    add_thread(store, "t:quiet", updated_at=T0, risk="low", subject="Low and quiet")
    config = write_cli_config(tmp_path, store_url)

    proc = run_cli("findings", "--config", config, check=True)
    assert "Trusted client" not in proc.stdout and "Low and quiet" not in proc.stdout
    assert "[HIGH] Pay me on PayPal\n" in proc.stdout
    assert "[LOW] Low but reported  (reported by you)\n" in proc.stdout
    assert proc.stdout.rstrip().endswith("2 thread(s) flagged")
    assert proc.stdout.index("Pay me on PayPal") < proc.stdout.index("Low but reported")

    proc = run_cli("findings", "--config", config, "--format", "json", check=True)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["thread"], r["reported"]) for r in records] == [
        ("t:risky", False), ("t:low", True),
    ]  # fmt: skip

    # --since leaves out a reported thread that was quiet since
    proc = run_cli("findings", "--config", config, "--since", "2026-11-21", check=True)
    assert "Low but reported" not in proc.stdout


# --------------------------------------------------------------------------- migration


def _make_v3(url: str) -> None:
    """A store as inbox-guard wrote it at schema v3, with a thread and its message."""
    add = st.Store(url)
    add_thread(add, "t:old", updated_at=T0, subject="Kept across the upgrade")
    add.close()
    as_version(url, 3)


def test_a_v3_store_is_migrated_in_place_and_keeps_its_rows(store_url: str, tmp_path: Path) -> None:
    _make_v3(store_url)
    tables = set(sa.inspect(sa.create_engine(store_url)).get_table_names())
    assert "feedback" not in tables and "account_lease" not in tables and "thread" in tables

    s = st.Store(store_url)
    try:
        assert s.version == st.SCHEMA_VERSION
        with s.session() as session:
            thread = st.get_thread(session, ACCOUNT, "t:old")
            assert thread is not None
            assert (thread.subject, thread.risk, thread.categories) == (
                "Kept across the upgrade", "high", "off_platform_payment",
            )  # fmt: skip
            assert (thread.marked_safe, thread.reported, thread.safe_categories) == (
                False, False, "",
            )  # fmt: skip
            assert len(st.thread_messages(session, ACCOUNT, "t:old")) == 1
        teach(s, "safe", "t:old", created_at=T0 + timedelta(hours=1))
        with s.session() as session:
            thread = st.get_thread(session, ACCOUNT, "t:old")
            assert thread is not None and thread.marked_safe
            assert [f.kind for f in st.feedback_rows(session)] == ["safe"]
    finally:
        s.close()
    assert rows(store_url, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(3, st.SCHEMA_VERSION + 1)
    ]
    # and the commands read it
    config = write_cli_config(tmp_path, store_url)
    code, out, _ = feedback_cli(config)
    assert code == 0 and "safe (moved to Guard/Safe)" in out


# --------------------------------------------------------------------------- escalation


def test_digest_puts_the_most_urgent_stage_first_with_its_advice_and_report(
    store: st.Store, store_url: str
) -> None:
    stages = {
        "t:asked": ("asked", "Asked once"),
        "t:declined": ("declined", "Declined already"),
        "t:again": ("asked_again", "Asked again"),
        "t:agreed": ("agreed", "You said yes"),
        "t:insists": ("insists", "Insists"),
        "t:plain": ("", "Plain phishing"),
    }
    for thread_id, (stage, subject) in stages.items():
        add_thread(store, thread_id, updated_at=T0, subject=subject)
        with store.session() as session:
            row = st.get_thread(session, ACCOUNT, thread_id)
            assert row is not None
            row.stage = stage
            session.add(row)
    with store.session() as session:
        session.add(
            st.ThreadReport(
                account=ACCOUNT, thread_id="t:insists", text="Report to Upwork: <b>x</b>\n"
            )
        )
    rendered = preview(store, store_url)
    order = [t.subject for t in rendered.content.threads]
    assert order[:3] == ["Insists", "You said yes", "Asked again"]
    assert order.index("Asked once") < order.index("Declined already")
    assert "The client insists after you declined twice: report them." in rendered.text
    assert "Step back before any work or payment" in rendered.text
    assert "   | Report to Upwork: <b>x</b>" in rendered.text
    assert "Report to Upwork: &lt;b&gt;x&lt;/b&gt;" in rendered.html  # escaped in HTML
