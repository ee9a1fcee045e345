"""The escalation ladder on a real Dovecot: a client who insists, one message per scan.

Request (INBOX) → the freelancer declines (Sent) → the client asks again → a second
refusal → the client insists. Each step is delivered and scanned in turn, as a day of
polls would; drafts are read back from Drafts over IMAP, the stage, report and digest
from the store and the CLI.
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

from support.cli import run_cli
from support.configs import write_config
from support.db import db_rows
from support.mail import make
from support.servers import MailAccount

CLIENT = "Rosa Vidal <rosa@cliente.example>"
ME = "freelancer@example.org"

# (folder, sender, body): the five steps, in Spanish from the client, English from us
LADDER = [
    (
        "INBOX",
        CLIENT,
        "Hola, me gusta tu propuesta. Para ahorrarnos la comisión de Upwork, ¿te puedo "
        "pagar directamente por PayPal o transferencia? Escríbeme por WhatsApp al "
        "+34 612 345 678 y lo hablamos.",
    ),
    (
        "Sent",
        ME,
        "Hi Rosa, thanks for reaching out. I'm sorry, but I can't accept payment outside "
        "Upwork or move our conversation to WhatsApp: I keep all work and payment on the "
        "platform. Happy to continue here.",
    ),
    (
        "INBOX",
        CLIENT,
        "Entiendo, pero de verdad sería mejor pagarte por fuera de Upwork, así nos "
        "ahorramos la comisión los dos. Mándame tu cuenta de PayPal y te pago hoy mismo.",
    ),
    (
        "Sent",
        ME,
        "Hi Rosa, as I said, I can't take payment outside Upwork or share my PayPal. "
        "All payments have to go through the platform; that won't change.",
    ),
    (
        "INBOX",
        CLIENT,
        "Vamos, nadie se va a enterar. Págame fuera de la plataforma por PayPal o por "
        "transferencia bancaria y olvidémonos de Upwork y de sus comisiones.",
    ),
]


def scan(config: Path) -> dict[str, Any]:
    proc = run_cli("scan", "--config", str(config), "--format", "json", check=True)
    return json.loads(proc.stdout)


def drafts_in(mailbox: MailAccount) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
        for raw in mailbox.messages("Drafts").values()
    ]


def stage(config: Path) -> str:
    return db_rows(config, "SELECT stage FROM thread WHERE stage <> ''")[0][0]


def test_a_client_who_insists_climbs_the_ladder_one_draft_per_rung(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        mailbox,
        imap={"username": mailbox.user},
        drafts={"enabled": True, "platform": "Upwork"},
    )
    ids: list[str] = []
    expected = ["asked", "declined", "asked_again", "declined_twice", "insists"]
    drafted_after = [1, 1, 2, 2, 3]
    for step, ((folder, sender, body), want, drafts) in enumerate(
        zip(LADDER, expected, drafted_after, strict=True)
    ):
        raw, msgid = make(
            sender=sender,
            to=ME if folder == "INBOX" else "rosa@cliente.example",
            subject="Propuesta de logo" if step == 0 else "Re: Propuesta de logo",
            body=body,
            reply_to_msg=ids[-1] if ids else None,
            references=ids[:-1] if ids else None,
        )
        ids.append(msgid)
        mailbox.save(raw, folder)
        scan(config)
        assert stage(config) == want, f"after step {step + 1}"
        assert len(mailbox.messages("Drafts")) == drafts, f"after step {step + 1}"

    found = drafts_in(mailbox)
    # one per rung, each threaded on the request it answers, in the client's language
    by_reply = {str(d["In-Reply-To"]): d for d in found}
    assert set(by_reply) == {ids[0], ids[2], ids[4]}
    for d in found:
        assert str(d["To"]).endswith("<rosa@cliente.example>")
        assert d.get_content().strip()
        assert "Upwork" in d.get_content()
    rungs = db_rows(config, "SELECT rung, language, done FROM draft ORDER BY rung")
    assert rungs == [(1, "es", 1), (2, "es", 1), (3, "es", 1)]

    # the report is ready: who, what was asked (dated), what was answered, the bundle
    ((text, bundle, sha),) = db_rows(
        config, "SELECT text, bundle, bundle_sha256 FROM thread_report"
    )
    assert "rosa@cliente.example" in text and "Asked 3 time(s); I declined 2 time(s)" in text
    assert text.count("\n- ") >= 5 and "declined" in text
    assert bundle and Path(bundle).is_file() and sha in text
    assert Path(bundle).parent == tmp_path / "reports"  # beside the store
    verify = run_cli("verify", bundle, "--expect", sha)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # deleting a draft never brings it back
    with mailbox.session() as client:
        client.select_folder("Drafts")
        client.delete_messages(client.search(["ALL"]))
        client.expunge()
    raw, msgid = make(
        sender=CLIENT,
        subject="Re: Propuesta de logo",
        body="¿Entonces me pasas tu PayPal o no? Te pago por fuera de Upwork.",
        reply_to_msg=ids[-1],
        references=ids[:-1],
    )
    mailbox.save(raw)
    scan(config)
    assert mailbox.messages("Drafts") == {}

    # the digest puts the thread first, under its stage, with the report
    digest = run_cli("digest", "--config", str(config), check=True).stdout
    assert "The client insists after you declined twice" in digest
    assert "rosa@cliente.example" in digest and "ready to paste" in digest

    # and the report can be made again on request
    again = run_cli(
        "report", _thread(config), "--dir", str(tmp_path), "--config", str(config), check=True
    )
    assert "Asked" in again.stdout and "What I answered" in again.stdout


def _thread(config: Path) -> str:
    return db_rows(config, "SELECT thread_id FROM thread WHERE stage <> ''")[0][0]


def test_a_freelancer_who_agreed_is_told_so_plainly(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, mailbox, imap={"username": mailbox.user}, drafts={"enabled": True}
    )
    ask, ask_id = make(
        sender=CLIENT,
        subject="Logo",
        body="Can we continue on WhatsApp instead? My number is +34 612 345 678, and I can "
        "pay you by PayPal directly to avoid the Upwork fee.",
    )
    mailbox.save(ask)
    scan(config)
    yes, _ = make(
        sender=ME,
        to="rosa@cliente.example",
        subject="Re: Logo",
        body="Sure, no problem! My WhatsApp is +1 415 555 0199 and my PayPal is "
        "me@example.org, send the payment there.",
        reply_to_msg=ask_id,
    )
    mailbox.save(yes, "Sent")
    scan(config)
    assert stage(config) == "agreed"
    digest = run_cli("digest", "--config", str(config), check=True).stdout
    assert "You agreed to move off the platform" in digest and "Step back" in digest
