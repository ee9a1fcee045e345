"""`inbox-guard export` and `verify` against a real Dovecot on loopback.

A dispute thread (the client's messages in INBOX, the freelancer's replies in Sent, one
with the delivered files attached) and unrelated mail are seeded server-side, scanned by
the real `inbox-guard scan`, found with `inbox-guard findings`, exported and verified,
all as subprocesses. What the server holds is read through the fixture's own, independent
IMAP connection.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from support.cli import run_cli
from support.configs import imap_section, secret_file, smtp_section, write_config
from support.mail import make
from support.servers import Dovecot, MailAccount, SmtpSink

CLIENT = "Jake Morrow <jake@morrow-goods.example>"
ME = "Alex Rivera <alex.work@example.org>"


# --------------------------------------------------------------------------- helpers


def ok(*args: str) -> str:
    return run_cli(*args, check=True).stdout


def mail(
    n: int,
    sender: str,
    to: str,
    subject: str,
    body: str,
    *,
    reply_to: str | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    raw, _ = make(
        sender=sender,
        to=to,
        subject=subject,
        body=body,
        msgid=f"<dispute-{n}@morrow-goods.example>",
        reply_to_msg=reply_to,
        date=datetime(2026, 11, 16 + n, 9, 30, tzinfo=UTC),
        attachment=(attachment[0], "application/zip", attachment[1]) if attachment else None,
    )
    return raw


def seed_dispute(acct: MailAccount) -> dict[str, list[int]]:
    """The dispute thread (INBOX and Sent) plus unrelated mail; returns the thread's UIDs."""
    kickoff = mail(
        1,
        CLIENT,
        ME,
        "Shopify store for Morrow Goods",
        "Hi Alex, as agreed on the platform: a Shopify store with 20 products, "
        "delivered by Friday. Budget as in the contract.",
    )
    delivery = mail(
        2,
        ME,
        CLIENT,
        "Re: Shopify store for Morrow Goods",
        "Hi Jake, the store is live. The theme files and the product import are attached, "
        "as listed in the contract.",
        reply_to="<dispute-1@morrow-goods.example>",
        attachment=("morrow-theme.zip", b"PK\x03\x04" + bytes(range(256)) * 40),
    )
    refusal = mail(
        3,
        CLIENT,
        ME,
        "Re: Shopify store for Morrow Goods",
        "The store still is not what I asked for. I want a full refund or you redo the "
        "whole thing for the same price. If it's not done by Monday I'll leave a 1-star "
        "review and open a dispute.\n\nJake",
        reply_to="<dispute-2@morrow-goods.example>",
    )
    answer = mail(
        4,
        ME,
        CLIENT,
        "Re: Shopify store for Morrow Goods",
        "Hi Jake, everything in the contract was delivered on time (see my message of "
        "Wednesday). Let's resolve this through the platform's resolution centre.",
        reply_to="<dispute-3@morrow-goods.example>",
    )
    uids = {"INBOX": [acct.save(kickoff)], "Sent": [acct.save(delivery, mailbox="Sent")]}
    acct.save(
        mail(7, "Maya <maya@studio.example>", ME, "Logo feedback", "Love the second logo!"),
        flags=("\\Seen",),
    )
    uids["INBOX"].append(acct.save(refusal))
    uids["Sent"].append(acct.save(answer, mailbox="Sent"))
    acct.save(mail(8, "CI <ci@builds.example>", ME, "Build passed", "All green."))
    return uids


def dispute_thread_id(config: Path) -> str:
    lines = ok("findings", "--config", str(config), "--format", "json").splitlines()
    records = [json.loads(line) for line in lines]
    disputes = [r for r in records if "dispute" in r["categories"]]
    assert len(disputes) == 1, records
    return str(disputes[0]["thread"])


def scanned_dispute(
    acct: MailAccount, tmp: Path, store_url: str | None = None, **tables: Any
) -> tuple[Path, str, dict[str, list[int]]]:
    """The dispute seeded in ``acct`` and scanned: the config, the thread's id, its UIDs."""
    uids = seed_dispute(acct)
    config = write_config(tmp, acct, store_url, **tables)
    ok("scan", "--config", str(config))
    return config, dispute_thread_id(config), uids


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def manifest_of(path: Path) -> dict[str, Any]:
    return dict(json.loads(read_zip(path)["MANIFEST.json"]))


def on_server(acct: MailAccount) -> dict[tuple[str, int], bytes]:
    return {
        (folder, uid): raw
        for folder in ("INBOX", "Sent")
        for uid, raw in acct.messages(folder).items()
    }


def assert_eml_match_server(bundle: Path, server: dict[tuple[str, int], bytes]) -> int:
    files = read_zip(bundle)
    checked = 0
    for m in manifest_of(bundle)["messages"]:
        if m["status"] != "included":
            continue
        held = server[(m["imap"]["folder"], m["imap"]["uid"])]
        assert files[m["file"]] == held  # byte for byte what the server holds
        assert m["sha256"] == hashlib.sha256(held).hexdigest() == m["recorded_sha256"]
        checked += 1
    return checked


def rewrite_with_one_byte_changed(bundle: Path, name: str) -> None:
    entries = read_zip(bundle)
    data = entries[name]
    at = data.index(b"full refund")
    entries[name] = data[:at] + b"F" + data[at + 1 :]  # "full" -> "Full"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, content in entries.items():
            zf.writestr(entry, content)
    bundle.write_bytes(buffer.getvalue())


# --------------------------------------------------------------------------- tests


def test_dispute_thread_exported_verified_and_one_changed_byte_caught(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, thread, uids = scanned_dispute(mailbox, tmp_path)
    flags_before = {f: mailbox.flags(f) for f in ("INBOX", "Sent")}
    bundle = tmp_path / "dispute.zip"

    out = ok("export", thread, "--out", str(bundle), "--config", str(config))

    assert out.startswith(f"wrote {bundle}: 4 of 4 message(s), 9 files; MANIFEST.json SHA-256")
    assert os.stat(bundle).st_mode & 0o777 == 0o600
    manifest = manifest_of(bundle)
    assert manifest["threads"][0]["thread_id"] == thread
    sources = [(m["imap"]["folder"], m["imap"]["uid"]) for m in manifest["messages"]]
    assert sources == [
        ("INBOX", uids["INBOX"][0]),
        ("Sent", uids["Sent"][0]),
        ("INBOX", uids["INBOX"][1]),
        ("Sent", uids["Sent"][1]),
    ]  # the whole thread in date order, and nothing of the unrelated mail
    assert {m["obtained_from"] for m in manifest["messages"]} == {"store"}
    assert all(
        m["imap"]["uidvalidity"] == mailbox.uidvalidity(m["imap"]["folder"])
        for m in manifest["messages"]
    )
    assert assert_eml_match_server(bundle, on_server(mailbox)) == 4
    timeline = read_zip(bundle)["timeline.txt"].decode()
    assert "morrow-theme[.]zip (application/zip, 10.0 KB (10,244 bytes))" in timeline
    assert "dispute.threat" in timeline and "sent by you" in timeline
    assert {f: mailbox.flags(f) for f in ("INBOX", "Sent")} == flags_before

    noted = out.split("MANIFEST.json SHA-256 ")[1].strip()
    verified = run_cli("verify", str(bundle), "--expect", noted)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == (
        f"MANIFEST.json SHA-256 {noted} (the expected one)\nOK: 4 messages, 9 files verified\n"
    )

    refusal = manifest["messages"][2]["file"]
    rewrite_with_one_byte_changed(bundle, refusal)
    tampered = run_cli("verify", str(bundle))
    assert tampered.returncode == 1
    problems = tampered.stderr.splitlines()
    assert problems == [
        f"inbox-guard: error: {refusal}: altered (SHA-256 differs from MANIFEST.json) "
        "(message 3 of 4, 2026-11-19T09:30:00Z, from jake@morrow-goods.example, "
        "Message-ID <dispute-3@morrow-goods.example>)"
    ]


def test_thread_found_by_sender_or_subject(mailbox: MailAccount, tmp_path: Path) -> None:
    config, thread, _uids = scanned_dispute(mailbox, tmp_path)

    by_sender = tmp_path / "by-sender.zip"
    ok(
        "export",
        "--sender",
        "JAKE@morrow-goods.example",
        "--out",
        str(by_sender),
        "-c",
        str(config),
    )
    by_subject = tmp_path / "by-subject.zip"
    ok("export", "--query", "shopify STORE", "--out", str(by_subject), "-c", str(config))

    for bundle in (by_sender, by_subject):
        assert manifest_of(bundle)["threads"][0]["thread_id"] == thread
        assert len(manifest_of(bundle)["messages"]) == 4


def test_export_fetches_from_the_server_when_nothing_was_kept(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, thread, _uids = scanned_dispute(mailbox, tmp_path, evidence={"keep": "none"})
    flags_before = {f: mailbox.flags(f) for f in ("INBOX", "Sent")}
    bundle = tmp_path / "dispute.zip"

    ok("export", thread[:8], "--out", str(bundle), "--config", str(config))

    manifest = manifest_of(bundle)
    assert [m["obtained_from"] for m in manifest["messages"]] == ["imap"] * 4
    assert assert_eml_match_server(bundle, on_server(mailbox)) == 4
    # fetched with BODY.PEEK[] in read-only folders: not even \Seen changed
    assert {f: mailbox.flags(f) for f in ("INBOX", "Sent")} == flags_before
    assert run_cli("verify", str(bundle)).stdout.endswith("\nOK: 4 messages, 9 files verified\n")


def test_message_deleted_from_the_server_and_not_kept_is_listed_missing(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, thread, uids = scanned_dispute(mailbox, tmp_path, evidence={"keep": "none"})
    gone = uids["INBOX"][1]  # the client's refusal: exactly what they would like to unsay
    with mailbox.session() as client:
        client.select_folder("INBOX")
        client.delete_messages([gone])
        client.expunge()
    bundle = tmp_path / "dispute.zip"

    proc = run_cli("export", thread, "--out", str(bundle), "--config", str(config))

    assert proc.returncode == 1  # written, but incomplete: documented in `export --help`
    err = proc.stderr.splitlines()
    assert err[0] == (
        f"inbox-guard: warning: message 3 (INBOX UID {gone}, <dispute-3@morrow-goods.example>) "
        "is missing from the bundle: no copy in the store; no longer on the server "
        f"(deleted or moved from 'INBOX', UID {gone})"
    )
    assert err[1].startswith("inbox-guard: error: the bundle is incomplete: 1 of 4 message(s)")
    assert proc.stdout.startswith(f"wrote {bundle}: 3 of 4 message(s)")
    manifest = manifest_of(bundle)
    missing = manifest["messages"][2]
    assert missing["status"] == "missing" and missing["file"] is None
    assert missing["imap"]["uid"] == gone
    assert missing["message_id"] == "<dispute-3@morrow-goods.example>"
    assert "no longer on the server" in missing["note"]
    assert manifest["counts"] == {"messages": 4, "included": 3, "partial": 0, "missing": 1}
    assert "MISSING FROM THIS BUNDLE" in read_zip(bundle)["timeline.txt"].decode()
    assert assert_eml_match_server(bundle, on_server(mailbox)) == 3
    refused = run_cli("verify", str(bundle))  # a gap in the record is a failure ...
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "inbox-guard: error: MANIFEST.json: message 3 of 4, 2026-11-19T09:30:00Z, from "
        "jake@morrow-goods.example, Message-ID <dispute-3@morrow-goods.example> is listed as "
        "missing, so the bundle does not hold it (--allow-missing accepts that)"
    ]
    verified = run_cli("verify", str(bundle), "--allow-missing")  # ... unless accepted
    assert verified.returncode == 0
    assert verified.stdout.endswith(
        "\nOK: 3 messages, 8 files verified (1 message(s) listed as missing in MANIFEST.json)\n"
    )


def test_kept_evidence_survives_the_message_being_deleted(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    # keep = "risky" (the default): the thread is flagged
    config, thread, uids = scanned_dispute(mailbox, tmp_path)
    before = on_server(mailbox)
    with mailbox.session() as client:
        client.select_folder("INBOX")
        client.delete_messages(uids["INBOX"])
        client.expunge()
    bundle = tmp_path / "dispute.zip"

    ok("export", thread, "--out", str(bundle), "--config", str(config))

    assert assert_eml_match_server(bundle, before) == 4
    assert run_cli("verify", str(bundle)).returncode == 0


def test_recreated_folder_is_named_as_the_reason_until_the_next_scan(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config, thread, _uids = scanned_dispute(mailbox, tmp_path, evidence={"keep": "none"})
    mailbox.recreate_mailbox("Sent")  # same messages, new UIDVALIDITY and UIDs
    bundle = tmp_path / "dispute.zip"

    proc = run_cli("export", thread, "--out", str(bundle), "--config", str(config))

    assert proc.returncode == 1
    missing = [m for m in manifest_of(bundle)["messages"] if m["status"] == "missing"]
    assert [m["imap"]["folder"] for m in missing] == ["Sent", "Sent"]
    assert all("was re-created on the server" in m["note"] for m in missing)
    assert "run `inbox-guard scan`" in proc.stderr

    ok("scan", "--config", str(config))  # finds the same bytes under the new UIDs
    ok("export", thread, "--out", str(bundle), "--force", "--config", str(config))
    manifest = manifest_of(bundle)
    assert manifest["counts"]["included"] == 4
    assert assert_eml_match_server(bundle, on_server(mailbox)) == 4


def test_thread_of_one_of_several_mailboxes_fetched_from_its_own_server(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    upwork, fiverr = dovecot.account("upwork"), dovecot.account("fiverr")
    upwork.save(mail(9, "Rob <rob@agency.example>", ME, "Website quote", "Can you quote?"))
    seed_dispute(fiverr)
    pw = secret_file(tmp_path, "pw", dovecot.password)
    accounts = [
        {"name": acct.user.split("-")[0], "imap": imap_section(acct, pw)}
        for acct in (upwork, fiverr)
    ]
    config = write_config(tmp_path, None, evidence={"keep": "none"}, account=accounts)
    ok("scan", "--config", str(config))
    thread = dispute_thread_id(config)
    bundle = tmp_path / "dispute.zip"

    ok("export", thread, "--account", "fiverr", "--out", str(bundle), "--config", str(config))

    manifest = manifest_of(bundle)
    assert {m["account"] for m in manifest["messages"]} == {"fiverr"}
    assert [m["obtained_from"] for m in manifest["messages"]] == ["imap"] * 4
    assert assert_eml_match_server(bundle, on_server(fiverr)) == 4
    nothing = run_cli(
        "export",
        thread,
        "--account",
        "upwork",
        "--out",
        str(tmp_path / "x.zip"),
        "--config",
        str(config),
    )
    assert nothing.returncode == 2 and "no thread in the store matches" in nothing.stderr


def test_export_from_a_postgresql_store(
    mailbox: MailAccount, tmp_path: Path, postgres_url: str
) -> None:
    config, thread, _uids = scanned_dispute(mailbox, tmp_path, postgres_url)
    bundle = tmp_path / "dispute.zip"

    ok("export", "--query", "SHOPIFY", "--out", str(bundle), "--config", str(config))

    assert manifest_of(bundle)["threads"][0]["thread_id"] == thread
    assert assert_eml_match_server(bundle, on_server(mailbox)) == 4
    assert run_cli("verify", str(bundle)).stdout.endswith("\nOK: 4 messages, 9 files verified\n")


def test_manifest_hash_mailed_to_the_digest_address_checks_the_bundle(
    mailbox: MailAccount, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config, thread, _uids = scanned_dispute(
        mailbox,
        tmp_path,
        smtp=smtp_section(tmp_path, smtp_sink),
        digest={
            "to": "Alex at home <alex@home.example>",
            "from": "inbox-guard <guard@work.example>",
        },
    )
    bundle = tmp_path / "dispute.zip"

    out = ok("export", thread, "--out", str(bundle), "--mail-hash", "--config", str(config))

    manifest_sha = hashlib.sha256(read_zip(bundle)["MANIFEST.json"]).hexdigest()
    assert out.splitlines()[1] == (
        "mailed the MANIFEST.json SHA-256 to Alex at home <alex@home.example>"
    )
    [sent] = smtp_sink.wait_for(1)
    assert sent.rcpt_tos == ("alex@home.example",) and sent.tls
    assert sent.auth_user == smtp_sink.username
    mail_ = sent.message
    assert mail_["Subject"] == f"inbox-guard evidence bundle: MANIFEST.json SHA-256 {manifest_sha}"
    assert mail_["Date"] is not None and mail_["Auto-Submitted"] == "auto-generated"
    text = mail_.get_content()
    assert f"inbox-guard verify dispute.zip --expect {manifest_sha}" in text
    assert "4 of 4 in the bundle" in text and thread in text
    assert "full refund" not in text  # no mail text in it
    assert run_cli("verify", str(bundle), "--expect", manifest_sha).returncode == 0

    # the same bundle rebuilt with other content is caught by the mailed hash only
    entries = read_zip(bundle)
    manifest = json.loads(entries["MANIFEST.json"])
    refusal = manifest["messages"][2]
    forged = entries[refusal["file"]].replace(b"full refund", b"small favour")
    refusal["sha256"] = refusal["recorded_sha256"] = hashlib.sha256(forged).hexdigest()
    refusal["size"] = len(forged)
    data = json.dumps(manifest).encode()
    sums = [f"{hashlib.sha256(data).hexdigest()}  MANIFEST.json"] + [
        f"{e['sha256']}  {e['file']}" for e in manifest["messages"] + manifest["files"]
    ]
    entries.update(
        {
            refusal["file"]: forged,
            "MANIFEST.json": data,
            "MANIFEST.json.sha256": "\n".join(sums).encode(),
        }
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    bundle.write_bytes(buffer.getvalue())
    assert run_cli("verify", str(bundle)).returncode == 0  # consistent with itself
    caught = run_cli("verify", str(bundle), "--expect", manifest_sha)
    assert caught.returncode == 1
    assert f"not the expected {manifest_sha}" in caught.stderr


def test_mail_hash_without_a_digest_configured_is_refused_before_exporting(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    seed_dispute(mailbox)
    config = write_config(tmp_path, mailbox)
    ok("scan", "--config", str(config))
    bundle = tmp_path / "dispute.zip"

    proc = run_cli(
        "export", "--query", "shopify", "--out", str(bundle), "--mail-hash", "-c", str(config)
    )

    assert proc.returncode == 2 and not bundle.exists()
    assert proc.stderr == (
        "inbox-guard: error: --mail-hash needs [digest] and [smtp] in the configuration\n"
    )
