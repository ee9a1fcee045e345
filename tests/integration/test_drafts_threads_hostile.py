"""Hostile headers against a real Dovecot: drafts, label copies and threads (issue 11,
findings 1 and 8).

The scans are the real `inbox-guard scan` (a subprocess); what the server holds is read
through the fixture's own IMAP connection, the store through guard.store on the same URL.
Every crafted message is written here.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import zipfile
from pathlib import Path
from typing import Any

from sqlmodel import select
from support.cli import run_cli
from support.configs import write_config
from support.drafts import DRAFT_HEADER_NAMES, header_names
from support.servers import Dovecot, MailAccount

from guard import store as st

PAYMENT = (
    "The platform takes a big cut from both of us. I can pay you directly through PayPal "
    "so we avoid the fees, just send me your PayPal email."
)
CRLF_WORD = (
    "=?utf-8?q?<brief-1@client.example>=0D=0ABcc:_attacker@evil.example=0D=0A"
    "Content-Type:_text/html=0D=0A=0D=0A<p>Pay_me_at_evil.example</p><!--?="
)


def raw_mail(headers: list[tuple[str, str]], body: str) -> bytes:
    lines = [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


def b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def scan(config: Path) -> dict[str, Any]:
    proc = run_cli("scan", "--config", str(config), "--format", "json", check=True)
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def guard_flags(flags: set[str]) -> set[str]:
    return {f for f in flags if f.startswith("$Guard") or f == "$Phishing"}


def address_account(dovecot: Dovecot, stem: str) -> MailAccount:
    """A fresh Dovecot user whose login name is an address (the draft's From)."""
    return MailAccount(dovecot, f"{dovecot.new_user(stem)}@work.example")


# --------------------------------------------------------------------------- drafts


def test_hostile_headers_never_reach_the_draft_in_drafts(dovecot: Dovecot, tmp_path: Path) -> None:
    acct = address_account(dovecot, "alex")
    acct.save(
        raw_mail(
            [
                ("From", "Lena Client <lena@client.example>"),
                ("To", "Payments Desk <desk@evil.example>"),  # the sender's choice
                ("Subject", b_word("=?utf-8?q?Website=0D=0ABcc:_subject@evil.example?=")),
                ("Date", "Mon, 02 Nov 2026 10:00:00 +0000"),
                ("Message-ID", CRLF_WORD),
                (
                    "References",
                    "<brief-0@client.example> "
                    "=?utf-8?q?=0D=0ABcc:_refs@evil.example=0D=0AContent-Type:_text/html?=",
                ),
            ],
            PAYMENT,
        )
    )
    config = write_config(tmp_path, acct, drafts={"enabled": True, "platform": "Upwork"})

    assert scan(config)["drafts"] == 1

    (raw,) = acct.messages("Drafts").values()
    assert header_names(raw) == DRAFT_HEADER_NAMES
    assert b"evil.example" not in raw and b"<p>" not in raw
    for pol in (email.policy.default, email.policy.compat32):
        parsed = email.message_from_bytes(raw, policy=pol)
        assert parsed.get_all("Bcc") is None
        assert parsed.get_content_type() == "text/plain" and not parsed.is_multipart()
    draft = email.message_from_bytes(raw, policy=email.policy.default)
    assert draft["From"].addresses[0].addr_spec == acct.user
    assert [a.addr_spec for a in draft["To"].addresses] == ["lena@client.example"]
    assert str(draft["Subject"]) == "Re: =?utf-8?q?Website=0D=0ABcc:_subject@evil.example?="
    assert draft["In-Reply-To"] is None  # the client's Message-ID was no valid token
    assert str(draft["References"]) == "<brief-0@client.example>"
    body = draft.get_content()
    assert body.startswith("Hello Lena,") and "Upwork" in body
    assert "\\Draft" in acct.flags("Drafts")[next(iter(acct.messages("Drafts")))]


def test_draft_from_is_never_the_incoming_to(mailbox: MailAccount, tmp_path: Path) -> None:
    mailbox.save(
        raw_mail(
            [
                ("From", "Lena Client <lena@client.example>"),
                ("To", "Alex <billing@evil.example>"),
                ("Subject", "Website"),
                ("Message-ID", "<brief-1@client.example>"),
            ],
            PAYMENT,
        )
    )
    config = write_config(tmp_path, mailbox, drafts={"enabled": True})
    assert scan(config)["drafts"] == 1
    (raw,) = mailbox.messages("Drafts").values()
    draft = email.message_from_bytes(raw, policy=email.policy.default)
    assert draft["From"] is None  # the login name is no address: the mail program fills it
    assert draft["In-Reply-To"] == "<brief-1@client.example>"
    assert b"billing@evil.example" not in raw


# --------------------------------------------------------------------------- label copies


def test_scan_after_an_interrupted_label_copy_of_a_non_ascii_message_id(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    mailbox.save(
        raw_mail(
            [
                ("From", "Lena Client <lena@client.example>"),
                ("To", "alex@work.example"),
                ("Subject", "Pago"),
                ("Message-ID", "<pago-\u00f1o@client.example>"),
            ],
            PAYMENT,
        )
    )
    config = write_config(tmp_path, mailbox)
    first = scan(config)
    assert first["label_mode"] == "keywords+folders" and first["labelled"] == 1
    url = f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    store = st.Store(url)
    try:
        with store.session() as s:
            copies = list(s.exec(select(st.LabelCopy)))
            assert copies and all(c.done for c in copies)
            for c in copies:  # as if the scan died between the COPY and its record
                c.done = False
                s.add(c)
            (row,) = s.exec(select(st.StoredMessage))
            row.labels = ""
            row.label_pending = True
            s.add(row)
    finally:
        store.close()

    scan(config)  # used to end in UnicodeEncodeError, and so did every scan after it
    scan(config)

    store = st.Store(url)
    try:
        with store.session() as s:
            assert all(c.done for c in s.exec(select(st.LabelCopy)))
            (row,) = s.exec(select(st.StoredMessage))
            assert row.label_set and not row.label_pending
    finally:
        store.close()
    (flags,) = mailbox.flags().values()
    assert "$Phishing" not in flags and guard_flags(flags)


# --------------------------------------------------------------------------- threads


def test_a_forged_message_id_does_not_hijack_the_clients_thread(
    mailbox: MailAccount, tmp_path: Path, store_url: str
) -> None:
    client_uid = mailbox.save(
        raw_mail(
            [
                ("From", "Lena Client <lena@client.example>"),
                ("To", "Alex <alex@work.example>"),
                ("Subject", "Website brief"),
                ("Date", "Mon, 02 Nov 2026 10:00:00 +0000"),
                ("Message-ID", "<brief-1@client.example>"),
            ],
            "Hi Alex, the brief for the website is attached to the contract. Talk soon.",
        )
    )
    config = write_config(tmp_path, mailbox, store_url=store_url)
    scan(config)
    reuse_uid = mailbox.save(
        raw_mail(
            [
                ("From", "Lena Client <lena@client-payments.example>"),
                ("To", "Alex <alex@work.example>"),
                ("Subject", "Re: Website brief"),
                ("Date", "Mon, 02 Nov 2026 11:00:00 +0000"),
                ("Message-ID", "<brief-1@client.example>"),  # the client's own id
            ],
            "Small change about payment for this project. " + PAYMENT,
        )
    )
    cite_uid = mailbox.save(
        raw_mail(
            [
                ("From", "Lena Client <lena@client-payments.example>"),
                ("To", "Alex <alex@work.example>"),
                ("Subject", "Re: Website brief"),
                ("Date", "Mon, 02 Nov 2026 11:05:00 +0000"),
                ("Message-ID", "<pay-2@client-payments.example>"),
                ("In-Reply-To", "<brief-1@client.example>"),
                ("References", "<brief-1@client.example>"),
            ],
            PAYMENT,
        )
    )

    scan(config)

    flags = mailbox.flags()
    assert guard_flags(flags[client_uid]) == set()
    assert "$Phishing" in flags[reuse_uid]
    assert guard_flags(flags[cite_uid])
    store = st.Store(store_url)
    try:
        with store.session() as s:
            rows = {r.uid: r for r in s.exec(select(st.StoredMessage))}
            client, reuse, cite = rows[client_uid], rows[reuse_uid], rows[cite_uid]
            # the forger's two messages may share a thread (same subject and people),
            # never the client's
            assert client.thread_id not in {reuse.thread_id, cite.thread_id}
            assert client.risk == "none"
            thread = st.get_thread(s, "default", client.thread_id)
            assert thread is not None and thread.risk == "none" and not thread.labels
            findings = st.findings_for(s, [reuse.id or 0, client.id or 0])
            assert "thread.reused-message-id" in {f.rule for f in findings.get(reuse.id or 0, [])}
            assert not findings.get(client.id or 0)
            assert "phishing" in reuse.category_list
            client_thread = client.thread_id
    finally:
        store.close()

    bundle = tmp_path / "client.zip"
    proc = run_cli("export", client_thread, "--out", str(bundle), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(bundle) as z:
        manifest = json.loads(z.read("MANIFEST.json"))
        emls = [z.read(n) for n in z.namelist() if n.endswith(".eml")]
    assert [m["imap"]["uid"] for m in manifest["messages"]] == [client_uid]
    assert len(emls) == 1 and b"PayPal" not in emls[0]
