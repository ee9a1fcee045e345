"""`inbox-guard scan` against a real Dovecot on loopback.

Every assertion about the mailbox is made through a second, independent IMAP connection
(the fixture's ``flags`` / ``messages`` / ``mailboxes``), and about the store by reading
the SQLite file directly.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import CLI, run_cli
from support.configs import raw_config, write_config
from support.db import db_rows
from support.mail import CONTACT_BODY, harmless, make, mixed, risky_payment
from support.rules import builtin_rules
from support.servers import MailAccount

from guard.config import load_config
from guard.service.scan import ScanSettings, scan
from guard.store import Store

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"


def scan_json(config: Path, *extra: str) -> dict[str, Any]:
    proc = run_cli("scan", "--config", str(config), "--format", "json", *extra, check=True)
    return json.loads(proc.stdout)


def guard_keywords(flags: set[str]) -> set[str]:
    return {f for f in flags if f.startswith("$Guard") or f == "$Phishing"}


def by_msgid(acct: MailAccount, mailbox: str = "INBOX") -> dict[str, int]:
    out = {}
    for uid, raw in acct.messages(mailbox).items():
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out[line.split(b":", 1)[1].strip().decode()] = uid
    return out


def label_folder_ids(acct: MailAccount, folder: str) -> list[str]:
    if folder not in acct.mailboxes():
        return []
    return sorted(by_msgid(acct, folder))


# --------------------------------------------------------------------------- first scan


def test_first_scan_labels_risky_demo_mail_and_nothing_else(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    for path in sorted(DEMO.glob("*.eml")):
        seen = ("\\Seen",) if path.name.startswith("0") and path.name < "04" else ()
        mailbox.save(path.read_bytes(), flags=seen)
    before = mailbox.flags()
    config = write_config(tmp_path, mailbox)

    summary = scan_json(config)

    assert summary["new_messages"] == 6
    assert summary["risky"] == 4
    assert summary["labelled"] == 4
    assert summary["label_mode"] == "keywords+folders"
    after = mailbox.flags()
    # System flags are exactly as they were: nothing gained or lost \Seen.
    for uid, flags in before.items():
        assert after[uid] - guard_keywords(after[uid]) == flags
    labelled = {uid: guard_keywords(f) for uid, f in after.items() if guard_keywords(f)}
    assert labelled == {
        2: {"$GuardHighRisk", "$GuardOffPlatformPayment"},
        3: {"$GuardHighRisk", "$GuardOffPlatformContact"},
        4: {"$GuardHighRisk", "$Phishing"},
        5: {"$GuardHighRisk", "$GuardDispute"},
    }
    # The folder copies: one per message and label, visible to any client.
    boxes = mailbox.mailboxes()
    assert "Guard/High risk" in boxes and "Guard/Phishing" in boxes
    assert len(mailbox.messages("Guard/High risk")) == 4
    assert len(mailbox.messages("Guard/Dispute")) == 1
    assert len(mailbox.messages("INBOX")) == 6  # nothing moved or deleted
    # The store: one row per message, findings with evidence, a scan run.
    assert db_rows(config, "select count(*) from message")[0][0] == 6
    assert db_rows(config, "select count(*) from finding where category='phishing'")[0][0] >= 3
    runs = db_rows(config, "select new_messages, risky, error from scan_run")
    assert runs == [(6, 4, None)]
    mode = os.stat(config.parent / "guard.sqlite3").st_mode & 0o777
    assert mode == 0o600


def test_second_scan_of_unchanged_mailbox_fetches_nothing(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    for i in range(5):
        mailbox.save(harmless(i)[0])
    mailbox.save(risky_payment()[0])
    config = write_config(tmp_path, mailbox)
    scan_json(config)
    flags = mailbox.flags()

    summary = scan_json(config)

    assert summary["fetched"] == 0
    assert summary["fetch_commands"] == 0
    assert all(f["unchanged"] for f in summary["folders"].values())
    assert mailbox.flags() == flags
    assert db_rows(config, "select count(*) from message")[0][0] == 6


def test_new_mail_is_picked_up(mailbox: MailAccount, tmp_path: Path) -> None:
    mailbox.save(harmless(0)[0])
    config = write_config(tmp_path, mailbox)
    assert scan_json(config)["new_messages"] == 1
    uid = mailbox.save(make(body=CONTACT_BODY, subject="quick chat")[0])

    summary = scan_json(config)

    assert summary["fetched"] == 1 and summary["new_messages"] == 1 and summary["risky"] == 1
    assert guard_keywords(mailbox.flags()[uid]) == {"$GuardHighRisk", "$GuardOffPlatformContact"}


def test_thread_labels_reach_earlier_messages_and_later_replies(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    first, first_id = harmless(0, subject="Logo design", sender="ana@client.example")
    other, _ = harmless(1, subject="Logo design", sender="bob@other.example")
    u1 = mailbox.save(first)
    u_other = mailbox.save(other)
    config = write_config(tmp_path, mailbox)
    scan_json(config)
    assert not guard_keywords(mailbox.flags()[u1])

    reply, reply_id = risky_payment(
        subject="Re: Logo design", sender="ana@client.example", reply_to_msg=first_id
    )
    u2 = mailbox.save(reply)
    scan_json(config)
    later, _ = harmless(
        2,
        subject="Re: Logo design",
        sender="ana@client.example",
        reply_to_msg=reply_id,
        references=[first_id],
    )
    u3 = mailbox.save(later)
    scan_json(config)

    flags = mailbox.flags()
    expected = {"$GuardHighRisk", "$GuardOffPlatformPayment"}
    assert guard_keywords(flags[u1]) == expected  # the earlier harmless message
    assert guard_keywords(flags[u2]) == expected
    assert guard_keywords(flags[u3]) == expected  # the later harmless reply inherits
    assert not guard_keywords(flags[u_other])  # same subject, other correspondent
    threads = db_rows(config, "select count(distinct thread_id) from message")[0][0]
    assert threads == 2


def test_subject_fallback_needs_same_correspondents(mailbox: MailAccount, tmp_path: Path) -> None:
    # No References at all (some clients drop them): "Re:" + same people joins the thread.
    first, _ = harmless(0, subject="Website copy", sender="ana@client.example")
    u1 = mailbox.save(first)
    stranger, _ = risky_payment(subject="Re: Website copy", sender="eve@elsewhere.example")
    u_stranger = mailbox.save(stranger)
    reply, _ = risky_payment(subject="RE: Website copy", sender="ana@client.example")
    u2 = mailbox.save(reply)
    config = write_config(tmp_path, mailbox)
    scan_json(config)
    flags = mailbox.flags()
    assert guard_keywords(flags[u1]) == guard_keywords(flags[u2]) != set()
    assert db_rows(config, "select count(distinct thread_id) from message")[0][0] == 2
    assert guard_keywords(flags[u_stranger])


def test_dry_run_changes_nothing_and_lists_what_it_would_label(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    for path in sorted(DEMO.glob("*.eml")):
        mailbox.save(path.read_bytes())
    config = write_config(tmp_path, mailbox)
    flags, boxes = mailbox.flags(), mailbox.mailboxes()

    summary = scan_json(config, "--dry-run")
    text = run_cli("scan", "--config", str(config), "--dry-run", check=True).stdout

    assert summary["dry_run"] is True
    assert len(summary["would_label"]) == 4
    assert {x["uid"] for x in summary["would_label"]} == {2, 3, 4, 5}
    assert "would label" in text and "Guard/Phishing" in text
    assert mailbox.flags() == flags
    assert mailbox.mailboxes() == boxes
    assert db_rows(config, "select count(*) from message")[0][0] == 0
    assert db_rows(config, "select count(*) from scan_run")[0][0] == 0
    # A real scan afterwards still sees every message as new.
    assert scan_json(config)["new_messages"] == 6


def test_sent_folder_leak_is_flagged(mailbox: MailAccount, tmp_path: Path) -> None:
    question, qid = harmless(0, subject="Contract", sender="ana@client.example")
    mailbox.save(question)
    leak, _ = make(
        sender="freelancer@example.org",
        to="ana@client.example",
        subject="Re: Contract",
        body="Sure! My WhatsApp is +1 415 555 0199, message me there and we skip the platform.",
        reply_to_msg=qid,
    )
    uid = mailbox.save(leak, mailbox="Sent")
    config = write_config(tmp_path, mailbox)

    summary = scan_json(config)

    assert summary["folders"]["Sent"]["risky"] == 1
    assert guard_keywords(mailbox.flags("Sent")[uid]) >= {"$GuardOffPlatformContact"}
    # The client's question in INBOX is the same conversation, so it is labelled too.
    assert guard_keywords(mailbox.flags("INBOX")[1]) >= {"$GuardOffPlatformContact"}
    rows = db_rows(config, "select direction, risk from message where folder='Sent'")
    assert rows == [("out", "high")]


def test_uidvalidity_reset_is_resynced_without_double_counting(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    raws = [harmless(i)[0] for i in range(3)] + [risky_payment()[0]]
    for raw in raws:
        mailbox.save(raw)
    config = write_config(tmp_path, mailbox)
    scan_json(config)
    old = mailbox.uidvalidity()
    assert len(mailbox.messages("Guard/High risk")) == 1

    mailbox.recreate_mailbox("INBOX", raws)
    assert mailbox.uidvalidity() != old

    summary = scan_json(config)

    assert summary["folders"]["INBOX"]["uidvalidity_reset"] is True
    assert summary["new_messages"] == 0
    assert db_rows(config, "select count(*) from message")[0][0] == 4
    assert db_rows(config, "select count(*) from finding")[0][0] > 0
    flagged = [uid for uid, f in mailbox.flags().items() if guard_keywords(f)]
    assert len(flagged) == 1  # the keywords are written again on the new copy
    assert len(mailbox.messages("Guard/High risk")) == 1  # no second folder copy
    assert scan_json(config)["fetched"] == 0


def test_only_folder_and_missing_folder(mailbox: MailAccount, tmp_path: Path) -> None:
    mailbox.save(risky_payment()[0])
    config = write_config(tmp_path, mailbox)
    summary = scan_json(config, "--folder", "INBOX")
    assert list(summary["folders"]) == ["INBOX"]
    proc = run_cli("scan", "--config", str(config), "--folder", "Nope")
    assert proc.returncode == 1
    assert "Nope" in proc.stderr and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"port": 1}, "refused"),
        ({"tls": "implicit", "ca_file": None}, "certificate"),
        ({"host": "no-such-host.invalid", "tls": "implicit"}, "cannot resolve"),
    ],
)
def test_connection_failures_are_one_clear_line(
    mailbox: MailAccount, tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    imap = dict(change)
    if imap.get("tls") == "implicit" and "port" not in imap:
        imap["port"] = mailbox.tls_port
    config = write_config(tmp_path, mailbox, imap=imap)  # a ca_file of None: none at all
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_wrong_password_names_the_user_not_the_password(
    dovecot: Any, mailbox: MailAccount, tmp_path: Path
) -> None:
    config = write_config(tmp_path, mailbox)
    (tmp_path / "imap-password").write_text("definitely-wrong-pw\n")
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 1
    assert "login" in proc.stderr and mailbox.user in proc.stderr
    assert "definitely-wrong-pw" not in proc.stderr + proc.stdout


def test_failing_password_command_is_a_config_error(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(tmp_path, mailbox)
    text = config.read_text().replace(
        f'password_file = "{tmp_path / "imap-password"}"',
        'password_command = "echo s3cret-leak; exit 3"',
    )
    config.write_text(text)
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 2
    assert "password_command" in proc.stderr and "s3cret-leak" not in proc.stderr


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = raw_config(tmp_path, '[imap]\nhost = "127.0.0.1"\nport = "x"\nusername = "u"\n')
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 2
    assert "imap.port" in proc.stderr


# --------------------------------------------------------------------------- crash safety


@pytest.mark.parametrize("kill_after", [40, 330])
def test_scan_killed_mid_batch_then_rerun_labels_everything_exactly_once(
    mailbox: MailAccount, tmp_path: Path, kill_after: int
) -> None:
    n = 600
    raws, risky_ids = mixed(n, lambda i: i % 10 == 3, "deal {}", "update {}")
    mailbox.append_many(raws)
    config = write_config(tmp_path, mailbox, imap={"batch_size": 25})
    db = tmp_path / "guard.sqlite3"
    proc = subprocess.Popen(
        [*CLI, "scan", "--config", str(config), "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
                count = con.execute("select count(*) from message").fetchone()[0]
                con.close()
            except sqlite3.Error:
                count = 0
            if count >= kill_after:
                proc.send_signal(signal.SIGKILL)
                killed_at = count
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at < n, "the scan finished before it could be killed"

    summary = scan_json(config)
    assert summary["fetched"] >= n - killed_at

    assert db_rows(config, "select count(*) from message")[0][0] == n
    dupes = db_rows(
        config, "select uid, count(*) from message group by folder, uid having count(*) > 1"
    )
    assert dupes == []
    ids = by_msgid(mailbox)
    flags = mailbox.flags()
    for msgid, uid in ids.items():
        expected = {"$GuardHighRisk", "$GuardOffPlatformPayment"} if msgid in risky_ids else set()
        assert guard_keywords(flags[uid]) == expected, msgid
    for folder in ("Guard/High risk", "Guard/Off-platform payment"):
        assert label_folder_ids(mailbox, folder) == sorted(risky_ids)
        assert len(mailbox.messages(folder)) == len(risky_ids)
    assert all("\\Seen" not in f for f in flags.values())


# --------------------------------------------------------------------------- in-process API


def test_store_on_postgresql(mailbox: MailAccount, tmp_path: Path, postgres_url: str) -> None:
    for i in range(3):
        mailbox.save(harmless(i)[0])
    first, fid = harmless(3, subject="Budget", sender="ana@client.example")
    mailbox.save(first)
    mailbox.save(
        risky_payment(subject="Re: Budget", sender="ana@client.example", reply_to_msg=fid)[0]
    )
    config_path = write_config(tmp_path, mailbox, store={"url": postgres_url})
    config = load_config(config_path)
    store = Store(config.store.url)
    try:
        summary = scan(ScanSettings.from_config(config), store, builtin_rules())
        again = scan(ScanSettings.from_config(config), store, builtin_rules())
    finally:
        store.close()
    assert summary.new_messages == 5 and summary.labelled == 2
    assert again.fetched == 0
    flags = mailbox.flags()
    assert sum(1 for f in flags.values() if "$GuardOffPlatformPayment" in f) == 2
    proc = run_cli("findings", "--config", str(config_path), "--format", "json", check=True)
    threads = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(threads) == 1
    assert threads[0]["categories"] == ["off_platform_payment"]
    assert [m["subject"] for m in threads[0]["messages"]] == ["Budget", "Re: Budget"]


def test_findings_lists_threads_riskiest_first(mailbox: MailAccount, tmp_path: Path) -> None:
    for path in sorted(DEMO.glob("*.eml")):
        mailbox.save(path.read_bytes())
    config = write_config(tmp_path, mailbox)
    scan_json(config)
    proc = run_cli("findings", "--config", str(config), "--format", "json", check=True)
    threads = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [t["risk"] for t in threads] == ["high", "high", "high", "high"]
    assert all(t["messages"][0]["findings"] for t in threads)
    text = run_cli("findings", "--config", str(config), check=True).stdout
    assert "4 thread(s) flagged" in text and "dispute.threat" in text
    none_since = run_cli(
        "findings", "--config", str(config), "--since", "2099-01-01", check=True
    ).stdout
    assert "0 thread(s) flagged" in none_since
    bad = run_cli("findings", "--config", str(config), "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


# --------------------------------------------------------------------------- Gmail


def test_gmail_labels_and_threads_from_x_gm_thrid(gmail: Any, tmp_path: Path) -> None:
    first, fid = harmless(0, subject="Shop redesign", sender="ana@client.example")
    u1 = gmail.append(first)
    unrelated, _ = harmless(1, subject="Invoice", sender="bob@other.example")
    u_other = gmail.append(unrelated)
    config = write_config(tmp_path, gmail)
    summary = scan_json(config)
    assert summary["label_mode"] == "gmail"

    reply, _ = risky_payment(
        subject="Re: Shop redesign", sender="ana@client.example", reply_to_msg=fid
    )
    u2 = gmail.append(reply)
    summary = scan_json(config)

    assert summary["new_messages"] == 1 and summary["labelled"] == 2
    labels = gmail.labels()
    expected = {"Guard/High risk", "Guard/Off-platform payment"}
    assert labels[u1] >= expected and labels[u2] >= expected
    assert not {x for x in labels[u_other] if x.startswith("Guard/")}
    # Gmail mode writes labels only: no keywords, no label folders.
    assert not any(f.startswith("$Guard") for fl in gmail.flags().values() for f in fl)
    # ... only the two feedback labels the user may add (Guard/Safe, Guard/Report)
    assert sorted(b for b in gmail.mailboxes() if b.startswith("Guard/")) == [
        "Guard/Report",
        "Guard/Safe",
    ]
    thrids = gmail.thread_ids()
    rows = dict(db_rows(config, "select uid, thread_id from message where folder='INBOX'"))
    assert rows[u1] == rows[u2] == f"gm:{thrids[u1]}"
    assert rows[u_other] == f"gm:{thrids[u_other]}" != rows[u1]


def test_labels_mode_folders_forced_on_dovecot(mailbox: MailAccount, tmp_path: Path) -> None:
    uid = mailbox.save(risky_payment()[0])
    config = write_config(tmp_path, mailbox, labels={"mode": "folders", "prefix": "Safety"})
    summary = scan_json(config)
    assert summary["label_mode"] == "folders"
    assert not guard_keywords(mailbox.flags()[uid])
    assert len(mailbox.messages("Safety/Off-platform payment")) == 1


def test_second_concurrent_scan_is_refused(mailbox: MailAccount, tmp_path: Path) -> None:
    import fcntl

    mailbox.save(risky_payment()[0])
    config = write_config(tmp_path, mailbox)
    lock = tmp_path / ".guard.sqlite3.default.scan-lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running scan holds
        proc = run_cli("scan", "--config", str(config))
    finally:
        os.close(fd)
    assert proc.returncode == 1 and "another scan" in proc.stderr
    assert not guard_keywords(mailbox.flags()[1])
    assert scan_json(config)["labelled"] == 1


@pytest.mark.parametrize(("keep", "expected"), [("risky", 2), ("all", 3), ("none", 0)])
def test_originals_of_flagged_threads_are_kept_byte_for_byte(
    mailbox: MailAccount, tmp_path: Path, keep: str, expected: int
) -> None:
    import hashlib

    first, fid = harmless(0, subject="Shop", sender="ana@client.example")
    other, _ = harmless(1, subject="Other", sender="bob@other.example")
    mailbox.save(first)
    mailbox.save(other)
    config = write_config(tmp_path, mailbox, evidence={"keep": keep})
    scan_json(config)  # the first message is harmless when it is read
    reply, _ = risky_payment(subject="Re: Shop", sender="ana@client.example", reply_to_msg=fid)
    mailbox.save(reply)
    scan_json(config)

    rows = db_rows(config, "select sha256, data from evidence")
    assert len(rows) == expected
    for sha, data in rows:
        assert hashlib.sha256(data).hexdigest() == sha  # exactly the bytes on the server
    on_server = {hashlib.sha256(raw).hexdigest() for raw in mailbox.messages().values()}
    assert {sha for sha, _ in rows} <= on_server
    if keep == "risky":
        kept = {sha for sha, _ in rows}
        thread = db_rows(config, "select content_hash from message where subject like '%Shop'")
        assert kept == {h for (h,) in thread}


# --------------------------------------------------------------------------- drafts


def test_decline_draft_for_an_off_platform_request_is_written_once(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    first, fid = harmless(0, subject="Tienda online", sender="Lucía Gómez <lucia@cliente.example>")
    mailbox.save(first)
    ask, ask_id = make(
        sender="Lucía Gómez <lucia@cliente.example>",
        to="Alex <alex@work.example>",
        subject="Re: Tienda online",
        body="Hola Alex, te puedo pagar directamente por PayPal para evitar las comisiones de la "
        "plataforma. Mándame tu correo de PayPal y te envío la mitad hoy.",
        reply_to_msg=fid,
    )
    mailbox.save(ask)
    config = write_config(tmp_path, mailbox, drafts={"enabled": True, "platform": "Upwork"})
    summary = scan_json(config)
    assert summary["drafts"] == 1

    drafts = mailbox.messages("Drafts")
    assert len(drafts) == 1
    uid, raw = next(iter(drafts.items()))
    import email
    from email import policy

    draft = email.message_from_bytes(raw, policy=policy.default)
    assert draft["To"].addresses[0].addr_spec == "lucia@cliente.example"
    # From comes from the configuration (a login name that is no address: none), never
    # from the client's To
    assert draft["From"] is None
    assert draft["In-Reply-To"] == ask_id
    assert fid in draft["References"] and ask_id in draft["References"]
    assert draft["Subject"] == "Re: Tienda online"
    body = draft.get_content()
    assert "Upwork" in body and "Hola" in body  # Spanish, like the client
    assert "\\Draft" in mailbox.flags("Drafts")[uid]

    # Deleted by the user: never created again, even when the client insists.
    with mailbox.session() as client:
        client.select_folder("Drafts")
        client.delete_messages([uid])
        client.expunge()
    again, _ = make(
        sender="Lucía Gómez <lucia@cliente.example>",
        to="alex@work.example",
        subject="Re: Tienda online",
        body="Insisto, te pago directo por PayPal y evitamos las comisiones.",
        reply_to_msg=ask_id,
    )
    mailbox.save(again)
    assert scan_json(config)["drafts"] == 0
    assert mailbox.messages("Drafts") == {}


def test_no_drafts_unless_enabled(mailbox: MailAccount, tmp_path: Path) -> None:
    mailbox.save(risky_payment()[0])
    config = write_config(tmp_path, mailbox)
    assert scan_json(config)["drafts"] == 0
    assert mailbox.messages("Drafts") == {}
