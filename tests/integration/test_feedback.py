"""Teaching the guard from the mail client: Guard/Safe and Guard/Report, on real servers.

The user's side is played with a second IMAP connection (MOVE, COPY, STORE -FLAGS,
+X-GM-LABELS) as a mail client would; every assertion about the mailbox is read back the
same way, and about the store from its SQLite file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.configs import write_config
from support.db import db_rows
from support.mail import PAYMENT_BODY, make
from support.servers import MailAccount

SAFE, REPORT = "Guard/Safe", "Guard/Report"
PAYMENT_COPY = "Guard/Off-platform payment"
HIGH = "Guard/High risk"
CLIENT = "dana@client.example"

# A task scam the rules do not catch on its own: polite, no link, no payment words.
SCAM_BODY = (
    "Hi {name},\n\n"
    "I run a small online store for handmade candles and I am looking for a reliable person to "
    "review our product listings every week. Each review takes about fifteen minutes and we "
    "pay a fixed amount for every batch you complete. You can work from home in your own "
    "time and there is no experience needed at all. Reply with your full name and the city "
    "you live in and our coordinator will send the first batch together with the "
    "instructions for the weekly review.\n\n"
    "Best regards,\n{signer}\n"
)


def scan_json(config: Path) -> dict[str, Any]:
    proc = run_cli("scan", "--config", str(config), "--format", "json", check=True)
    return json.loads(proc.stdout)


def ids_in(acct: MailAccount, folder: str) -> list[str]:
    """The Message-IDs in ``folder`` (one entry per message: duplicates show twice)."""
    if folder not in acct.mailboxes():
        return []
    out = []
    for raw in acct.messages(folder).values():
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
    return sorted(out)


def uid_of(acct: MailAccount, msgid: str, folder: str = "INBOX") -> int:
    for uid, raw in acct.messages(folder).items():
        if msgid.encode() in raw:
            return uid
    raise AssertionError(f"{msgid} not in {folder}")


def guard_flags(flags: set[str]) -> set[str]:
    return {f for f in flags if f.startswith("$Guard") or f == "$Phishing"}


def user_moves(acct: MailAccount, uid: int, target: str, source: str = "INBOX") -> None:
    with acct.session() as client:
        client.select_folder(source)
        client.move([uid], target)


def user_copies(acct: MailAccount, uid: int, target: str, source: str = "INBOX") -> None:
    with acct.session() as client:
        client.select_folder(source)
        client.copy([uid], target)


def feedback_rows(config: Path) -> list[tuple[Any, ...]]:
    return db_rows(config, "select kind, via, sender from feedback order by id")


def labelled_payment(mailbox: MailAccount, tmp_path: Path, **labels: str) -> tuple[Path, str]:
    raw, msgid = make(sender=CLIENT, subject="Logo work", body=PAYMENT_BODY)
    mailbox.save(raw, flags=["\\Seen"])
    config = write_config(tmp_path, mailbox, **({"labels": labels} if labels else {}))
    first = scan_json(config)
    assert first["labelled"] == 1
    assert SAFE in mailbox.mailboxes() and REPORT in mailbox.mailboxes()  # there to drag to
    return config, msgid


# --------------------------------------------------------------------------- safe


@pytest.mark.parametrize("how", ["move", "copy"])
def test_marked_safe_by_move_or_copy_is_put_back_once_with_its_flags_and_unlabelled(
    mailbox: MailAccount, tmp_path: Path, how: str
) -> None:
    config, msgid = labelled_payment(mailbox, tmp_path)
    uid = uid_of(mailbox, msgid)
    assert guard_flags(mailbox.flags()[uid])
    assert ids_in(mailbox, PAYMENT_COPY) == [msgid]
    (user_moves if how == "move" else user_copies)(mailbox, uid, SAFE)

    summary = scan_json(config)

    assert summary["feedback"] == 1
    assert ids_in(mailbox, "INBOX") == [msgid]  # back, exactly once
    assert ids_in(mailbox, SAFE) == []
    back = uid_of(mailbox, msgid)
    assert mailbox.flags()[back] == {"\\Seen"}  # its flags, without the guard's keywords
    assert ids_in(mailbox, PAYMENT_COPY) == [] and ids_in(mailbox, HIGH) == []
    assert feedback_rows(config) == [("safe", how, CLIENT)]
    assert db_rows(config, "select uid from message where folder = 'INBOX'") == [(back,)]
    assert db_rows(config, "select marked_safe, risk from thread") == [(1, "none")]

    again = scan_json(config)  # nothing flips back
    assert again["new_messages"] == 0 and again["labelled"] == 0 and again["feedback"] == 0
    assert mailbox.flags()[back] == {"\\Seen"} and ids_in(mailbox, PAYMENT_COPY) == []
    findings = run_cli("findings", "--config", str(config), "--format", "json", check=True)
    assert msgid not in findings.stdout


def test_removing_every_guard_keyword_marks_the_thread_safe(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, msgid = labelled_payment(mailbox, tmp_path)
    uid = uid_of(mailbox, msgid)
    with mailbox.session() as client:
        client.select_folder("INBOX")
        client.remove_flags([uid], sorted(guard_flags(mailbox.flags()[uid])))

    summary = scan_json(config)

    assert summary["feedback"] == 1
    assert feedback_rows(config) == [("safe", "keywords", CLIENT)]
    assert ids_in(mailbox, PAYMENT_COPY) == [] and ids_in(mailbox, HIGH) == []  # copies too
    assert mailbox.flags()[uid] == {"\\Seen"}
    scan_json(config)
    assert mailbox.flags()[uid] == {"\\Seen"} and ids_in(mailbox, PAYMENT_COPY) == []


def test_removing_one_keyword_is_not_a_safe_mark(mailbox: MailAccount, tmp_path: Path) -> None:
    config, msgid = labelled_payment(mailbox, tmp_path)
    uid = uid_of(mailbox, msgid)
    keywords = sorted(guard_flags(mailbox.flags()[uid]))
    with mailbox.session() as client:
        client.select_folder("INBOX")
        client.remove_flags([uid], keywords[:1])
    assert scan_json(config)["feedback"] == 0
    assert feedback_rows(config) == []
    assert guard_flags(mailbox.flags()[uid]) == set(keywords[1:])  # and not added back


def test_a_trusted_sender_is_not_labelled_again_for_that_but_still_for_phishing(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, msgid = labelled_payment(mailbox, tmp_path)
    user_moves(mailbox, uid_of(mailbox, msgid), SAFE)
    scan_json(config)

    again, again_id = make(
        sender=CLIENT,
        subject="Next logo",
        body="For the next one too: " + PAYMENT_BODY,
    )
    phish, phish_id = make(
        sender=CLIENT,
        subject="Your payment is on hold",
        body=(
            "Your Upwork payment is on hold. Verify your account within 24 hours or it will "
            "be suspended: http://upwork-verify-account.example-login.top/secure/signin"
        ),
    )
    mailbox.save(again)
    mailbox.save(phish)
    scan_json(config)

    flags = mailbox.flags()
    assert not guard_flags(flags[uid_of(mailbox, again_id)])
    assert "$Phishing" in flags[uid_of(mailbox, phish_id)]


# --------------------------------------------------------------------------- report


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_reported_message_is_labelled_and_its_campaign_caught_from_another_sender(
    mailbox: MailAccount, tmp_path: Path, how: str
) -> None:
    raw, msgid = make(
        sender="coordinator@candles.example",
        subject="Weekly product review job",
        body=SCAM_BODY.format(name="Anna", signer="Maria Lopez"),
    )
    uid = mailbox.save(raw)
    config = write_config(tmp_path, mailbox)
    assert scan_json(config)["labelled"] == 0  # the rules miss it
    (user_moves if how == "move" else user_copies)(mailbox, uid, REPORT)

    assert scan_json(config)["feedback"] == 1
    assert ids_in(mailbox, "INBOX") == [msgid] and ids_in(mailbox, REPORT) == []
    back = uid_of(mailbox, msgid)
    assert "$GuardReported" in mailbox.flags()[back]
    assert ids_in(mailbox, "Guard/Reported") == [msgid]
    assert db_rows(config, "select kind, via from feedback") == [("report", how)]

    near, near_id = make(
        sender="hr-team@other-candles.example",
        subject="Weekly product review job",
        body=SCAM_BODY.format(name="Tomasz", signer="Olga Brenner"),
    )
    unrelated, unrelated_id = make(
        sender="ana@client.example",
        subject="Logo feedback",
        body="Thanks for the drafts. The second logo works best; could you try it in dark "
        "blue and send the files by Friday? The invoice can go through the platform as usual.",
    )
    mailbox.save(near)
    mailbox.save(unrelated)
    scan_json(config)

    flags = mailbox.flags()
    assert guard_flags(flags[uid_of(mailbox, near_id)])
    assert not guard_flags(flags[uid_of(mailbox, unrelated_id)])
    evidence = db_rows(
        config,
        "select f.evidence from finding f join message m on m.id = f.message_pk "
        f"where f.rule = 'guard.reported_campaign' and m.message_id = '{near_id}'",
    )
    assert evidence and "reported on" in evidence[0][0]
    scan_json(config)  # rescans change nothing
    assert ids_in(mailbox, "Guard/Reported") == [msgid]


# --------------------------------------------------------------------------- folders only


def test_folders_only_mode_safe_by_move_and_report_by_copy(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, msgid = labelled_payment(mailbox, tmp_path, mode="folders")
    assert not guard_flags(mailbox.flags()[uid_of(mailbox, msgid)])
    user_moves(mailbox, uid_of(mailbox, msgid), SAFE)
    scan_json(config)
    assert ids_in(mailbox, "INBOX") == [msgid]
    assert mailbox.flags()[uid_of(mailbox, msgid)] == {"\\Seen"}
    assert ids_in(mailbox, PAYMENT_COPY) == [] and ids_in(mailbox, HIGH) == []

    raw, other = make(sender="x@shop.example", subject="Weekly job", body=SCAM_BODY)
    uid = mailbox.save(raw)
    scan_json(config)
    user_copies(mailbox, uid, REPORT)
    scan_json(config)
    assert ids_in(mailbox, REPORT) == [] and ids_in(mailbox, "INBOX") == sorted([msgid, other])
    assert ids_in(mailbox, "Guard/Reported") == [other]


# --------------------------------------------------------------------------- Gmail


def test_gmail_labels_safe_and_report(gmail: Any, tmp_path: Path) -> None:
    raw, _ = make(sender=CLIENT, subject="Logo work", body=PAYMENT_BODY)
    u_pay = gmail.append(raw)
    scam, _ = make(sender="c@candles.example", subject="Weekly job", body=SCAM_BODY)
    u_scam = gmail.append(scam)
    config = write_config(tmp_path, gmail)
    scan_json(config)
    assert "Guard/Off-platform payment" in gmail.labels()[u_pay]
    with gmail.session() as client:
        client.select_folder("INBOX")
        client.add_gmail_labels([u_pay], ["Guard/Safe"])
        client.add_gmail_labels([u_scam], ["Guard/Report"])

    summary = scan_json(config)

    assert summary["feedback"] == 2
    labels = gmail.labels()
    assert not {x for x in labels[u_pay] if x.startswith("Guard/")}
    assert {x for x in labels[u_scam] if x.startswith("Guard/")} == {"Guard/Reported"}
    assert sorted(r[:2] for r in feedback_rows(config)) == [
        ("report", "gmail-label"),
        ("safe", "gmail-label"),
    ]
    scan_json(config)
    assert not {x for x in gmail.labels()[u_pay] if x.startswith("Guard/")}


def test_gmail_move_into_the_safe_label_is_put_back_in_the_inbox(
    gmail: Any, tmp_path: Path
) -> None:
    raw, msgid = make(sender=CLIENT, subject="Logo work", body=PAYMENT_BODY)
    uid = gmail.append(raw, flags=["\\Seen"])
    config = write_config(tmp_path, gmail)
    scan_json(config)
    with gmail.session() as client:
        client.select_folder("INBOX")
        client.move([uid], "Guard/Safe")

    assert scan_json(config)["feedback"] == 1

    with gmail.session() as client:
        assert client.select_folder("Guard/Safe")[b"EXISTS"] == 0
        client.select_folder("INBOX")
        back = client.search(["HEADER", "Message-ID", msgid])
    assert len(back) == 1
    assert gmail.flags()[back[0]] == {"\\Seen"}
    assert not {x for x in gmail.labels()[back[0]] if x.startswith("Guard/")}
    assert feedback_rows(config) == [("safe", "move", CLIENT)]


def test_forgetting_a_safe_mark_puts_the_labels_back_at_the_next_scan(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, msgid = labelled_payment(mailbox, tmp_path)
    user_moves(mailbox, uid_of(mailbox, msgid), SAFE)
    scan_json(config)
    listed = json.loads(
        run_cli("feedback", "--config", str(config), "--format", "json", check=True).stdout
    )
    assert [(f["kind"], f["sender"]) for f in listed] == [("safe", CLIENT)]

    run_cli("feedback", "--config", str(config), "--forget", str(listed[0]["id"]), check=True)
    scan_json(config)

    back = uid_of(mailbox, msgid)
    assert "$GuardOffPlatformPayment" in mailbox.flags()[back]
    assert ids_in(mailbox, PAYMENT_COPY) == [msgid]  # one copy again, not two
    gone = run_cli("feedback", "--config", str(config), "--format", "json", check=True)
    assert json.loads(gone.stdout) == []
