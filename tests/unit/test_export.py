"""Dispute evidence bundles without a mail server: what goes in (originals, timeline,
manifest), where originals come from when the store has none, and what `verify` catches.

Store contents are real rows in a real SQLite file; the IMAP server is replaced by a
small in-memory source (the real one is in tests/integration/test_export.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support.mail import make

from guard import reports as ex
from guard import store as st
from guard.cli import main
from guard.mail import parse_message

NOW = datetime(2026, 11, 25, 12, 0, 0)
HOSTILE = (
    "Refund <script>document.body.dataset.pwned=1</script> "
    '"><img src=x onerror=alert(1)> \u202egpj.exe \x1b[31mRED https://pay.evil.example/login'
)


# --------------------------------------------------------------------------- helpers


class Tags(HTMLParser):
    """The element and attribute names of a page (what a browser would act on)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes.update(name for name, _value in attrs)


MESSAGE_FIELDS = {
    "subject": "Logo design",
    "body": "Hello",
    "sender": "Jake Morrow <jake@client.example>",
    "to": "me@work.example",
}


def message(
    n: int,
    *,
    attachment: tuple[str, bytes] | None = None,
    reply_to: str | None = None,
    **fields: str,
) -> bytes:
    """Message ``n`` (sent at 9:``n`` on 20 November 2026); ``fields`` replace any of
    MESSAGE_FIELDS; ``attachment`` (file name, content) goes in as a PDF."""
    pdf = (attachment[0], "application/pdf", attachment[1]) if attachment else None
    raw, _ = make(
        msgid=f"<m{n}@client.example>",
        date=datetime(2026, 11, 20, 9, n, tzinfo=UTC),
        reply_to_msg=reply_to,
        attachment=pdf,
        **(MESSAGE_FIELDS | fields),
    )
    return raw


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[st.Store]:
    s = st.Store(f"sqlite:///{tmp_path / 'guard.sqlite3'}")
    yield s
    s.close()


_uid = iter(range(1, 1_000_000))


def seed(
    store: st.Store,
    raws: Sequence[bytes],
    *,
    thread_id: str = "t:0123456789abcdef01234567",
    keep: Sequence[bool] | None = None,
    folders: Sequence[str] | None = None,
    account: str = "default",
    uidvalidity: int = 7,
    kept_bytes: dict[int, bytes] | None = None,
) -> list[st.StoredMessage]:
    """Rows as a scan leaves them: one per message, a finding on the last one, the
    thread row, and the originals of those with ``keep`` in the evidence table."""
    keep = keep if keep is not None else [True] * len(raws)
    folders = folders or ["INBOX"] * len(raws)
    rows = []
    with store.session() as session:
        for i, raw in enumerate(raws):
            hashed = (kept_bytes or {}).get(i, raw)  # what the scan fetched (a prefix?)
            msg = parse_message(raw)
            row = st.StoredMessage(
                account=account,
                folder=folders[i],
                uidvalidity=uidvalidity,
                uid=next(_uid),
                direction="out" if folders[i] == "Sent" else "in",
                message_id=msg.message_id or None,
                content_hash=sha(hashed),
                thread_id=thread_id,
                date=st.as_utc_naive(msg.date),
                internal_date=st.as_utc_naive(msg.date),
                sender=msg.from_.addr if msg.from_ else "",
                sender_name=msg.from_.name if msg.from_ else "",
                recipients=",".join(a.addr for a in msg.to),
                subject=msg.subject,
                size=len(raw),
                risk="medium" if i == len(raws) - 1 else "none",
                categories="dispute" if i == len(raws) - 1 else "",
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            if i == len(raws) - 1:
                session.add(
                    st.StoredFinding(
                        message_pk=row.id,
                        rule="dispute.threat",
                        category="dispute",
                        score=3.0,
                        where="body",
                        evidence="I will open a dispute https://evil.example/x",
                        explanation="The client threatens a dispute or a bad review.",
                    )
                )
            if keep[i]:
                st.add_evidence(session, [hashed])
            rows.append(row)
        first = parse_message(raws[0])
        session.add(
            st.Thread(
                account=account,
                thread_id=thread_id,
                risk="medium",
                categories="dispute",
                subject=first.subject,
            )
        )
    return rows


class FakeServer:
    """An IMAP server in memory: (account, folder, uidvalidity) -> {uid: bytes}."""

    def __init__(self, unavailable: str | None = None) -> None:
        self.folders: dict[tuple[str, str, int], dict[int, bytes]] = {}
        self.unavailable = unavailable
        self.calls: list[tuple[str, str, int, list[int]]] = []

    def put(self, row: st.StoredMessage, raw: bytes) -> None:
        self.folders.setdefault((row.account, row.folder, row.uidvalidity), {})[row.uid] = raw

    def fetch(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, bytes]:
        self.calls.append((account, folder, uidvalidity, list(uids)))
        if self.unavailable:
            raise ex.SourceUnavailable(self.unavailable)
        box = self.folders.get((account, folder, uidvalidity), {})
        return {u: box[u] for u in uids if u in box}

    def close(self) -> None:
        pass


def export(
    store: st.Store,
    out: Path,
    source: ex.MessageSource | None = None,
    **kw: object,
) -> ex.ExportResult:
    with store.session() as session:
        threads = ex.find_threads(session, thread="t:")
    return ex.export_bundle(store, threads, out, source=source, now=NOW, **kw)  # type: ignore[arg-type]


def dispute_thread() -> list[bytes]:
    return [
        message(1, body="Here is the first draft of the logo."),
        message(
            2,
            subject="Re: Logo design",
            sender="Me <me@work.example>",
            to="jake@client.example",
            body="Attached the final files.",
            attachment=("final-logo.pdf", b"%PDF-1.4 final logo"),
            reply_to="<m1@client.example>",
        ),
        message(
            3,
            subject="Re: Logo design",
            body="Not what I asked for. Refund me or I open a dispute.",
            reply_to="<m2@client.example>",
        ),
    ]


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def rewrite_zip(
    path: Path,
    change: Callable[[dict[str, bytes]], dict[str, bytes]],
    out: Path | None = None,
) -> Path:
    """The bundle rewritten as a valid zip with ``change`` applied to its entries."""
    entries = change(read_zip(path))
    target = out or path
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    target.write_bytes(buffer.getvalue())
    return target


def flip(data: bytes, at: int | None = None) -> bytes:
    i = len(data) // 2 if at is None else at
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.fixture
def bundle(store: st.Store, tmp_path: Path) -> Path:
    seed(store, dispute_thread(), folders=["INBOX", "Sent", "INBOX"])
    out = tmp_path / "bundle.zip"
    export(store, out)
    return out


# --------------------------------------------------------------------------- what is in a bundle


def test_bundle_holds_the_original_bytes_of_every_message_in_date_order(
    store: st.Store, tmp_path: Path
) -> None:
    raws = dispute_thread()
    rows = seed(store, list(reversed(raws)), folders=["INBOX", "Sent", "INBOX"])
    out = tmp_path / "bundle.zip"

    result = export(store, out)

    files = read_zip(out)
    assert list(files) == [
        "messages/001-2026-11-20-logo-design.eml",
        "messages/002-2026-11-20-logo-design.eml",
        "messages/003-2026-11-20-logo-design.eml",
        "timeline.html",
        "timeline.txt",
        "README.txt",
        "MANIFEST.json",
        "MANIFEST.json.sha256",
    ]
    emls = [files[n] for n in files if n.startswith("messages/")]
    assert emls == raws  # byte for byte, oldest first
    assert [m.status for m in result.messages] == ["included"] * 3
    assert not result.incomplete
    assert {m.uid for m in result.messages} == {r.uid for r in rows}


def test_manifest_records_hash_size_and_imap_source_of_each_message(bundle: Path) -> None:
    files = read_zip(bundle)
    manifest = json.loads(files["MANIFEST.json"])

    assert manifest["format"] == "inbox-guard-evidence/1"
    assert manifest["tool"] == {"name": "inbox-guard", "version": "0.1.0"}
    assert manifest["created_at"] == "2026-11-25T12:00:00Z"
    assert [t["thread_id"] for t in manifest["threads"]] == ["t:0123456789abcdef01234567"]
    assert manifest["counts"] == {"messages": 3, "included": 3, "partial": 0, "missing": 0}
    second = manifest["messages"][1]
    data = files[second["file"]]
    assert second["sha256"] == sha(data) == second["recorded_sha256"]
    assert second["size"] == len(data)
    assert second["imap"]["folder"] == "Sent" and second["imap"]["uidvalidity"] == 7
    assert isinstance(second["imap"]["uid"], int)
    assert second["imap"]["internal_date"] == "2026-11-20T09:02:00Z"
    assert second["message_id"] == "<m2@client.example>"
    assert second["date_header"] == "Fri, 20 Nov 2026 09:02:00 +0000"
    assert second["direction"] == "out"
    assert second["obtained_from"] == "store"
    assert {f["file"] for f in manifest["files"]} == {"timeline.html", "timeline.txt", "README.txt"}
    for entry in manifest["files"]:
        assert entry["sha256"] == sha(files[entry["file"]])


def test_manifest_hash_is_the_first_line_of_the_sha256_file(bundle: Path) -> None:
    files = read_zip(bundle)
    lines = files["MANIFEST.json.sha256"].decode().splitlines()

    assert lines[0] == f"{sha(files['MANIFEST.json'])}  MANIFEST.json"
    listed = dict(reversed(line.split("  ", 1)) for line in lines[1:])
    assert set(listed) == set(files) - {"MANIFEST.json", "MANIFEST.json.sha256"}
    assert all(listed[name] == sha(files[name]) for name in listed)


def test_sha256sum_alone_verifies_the_unpacked_bundle(bundle: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(unpacked)  # our own bundle: the names are known to be safe

    ok = subprocess.run(
        ["sha256sum", "-c", "MANIFEST.json.sha256"], cwd=unpacked, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == 7

    eml = next((unpacked / "messages").iterdir())
    eml.write_bytes(flip(eml.read_bytes()))
    bad = subprocess.run(
        ["sha256sum", "-c", "MANIFEST.json.sha256"], cwd=unpacked, capture_output=True, text=True
    )
    assert bad.returncode == 1 and f"messages/{eml.name}: FAILED" in bad.stdout


def test_bundle_and_its_entries_are_private(bundle: Path) -> None:
    assert os.stat(bundle).st_mode & 0o777 == 0o600
    with zipfile.ZipFile(bundle) as zf:
        for info in zf.infolist():
            assert info.external_attr >> 16 == 0o100600, info.filename
            assert info.date_time == (2026, 11, 25, 12, 0, 0)


def test_export_is_deterministic(store: st.Store, tmp_path: Path) -> None:
    seed(store, dispute_thread())
    export(store, tmp_path / "a.zip")
    export(store, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_existing_file_is_not_replaced_unless_asked(store: st.Store, tmp_path: Path) -> None:
    seed(store, dispute_thread())
    out = tmp_path / "bundle.zip"
    out.write_bytes(b"keep me")

    with pytest.raises(ex.ExportError, match="already exists"):
        export(store, out)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir() if ".part" in p.name) == []

    export(store, out, overwrite=True)
    assert ex.verify_bundle(out).ok


def test_a_failed_export_leaves_nothing_behind(
    store: st.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, dispute_thread())

    def broken(_timeline: object) -> tuple[str, str]:
        raise RuntimeError("template exploded")

    monkeypatch.setattr("guard.reports.export.render_timeline", broken)
    with pytest.raises(RuntimeError):
        export(store, tmp_path / "bundle.zip")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("guard")) == []


# --------------------------------------------------------------------------- the timeline


def test_timeline_lists_dates_people_findings_and_attachments(
    store: st.Store, tmp_path: Path
) -> None:
    seed(store, dispute_thread(), folders=["INBOX", "Sent", "INBOX"])
    out = tmp_path / "bundle.zip"
    export(store, out, zone=ZoneInfo("Europe/Berlin"))
    text = read_zip(out)["timeline.txt"].decode()
    html = read_zip(out)["timeline.html"].decode()

    for page in (text, html):
        assert "2026-11-20 09:02:00 UTC" in page
        assert "2026-11-20 10:02:00 CET" in page  # the configured zone beside UTC
        assert "Europe/Berlin" in page
        assert "sent by you" in page and "received" in page
        # file names are defanged like any mail text: ".pdf" is also a top-level domain
        assert "final-logo[.]pdf" in page and "application/pdf" in page
        assert "Dispute" in page and "dispute.threat" in page
        assert "The client threatens a dispute" in page
        assert "hxxps://evil[.]example/x" in page and "https://evil.example" not in page
        assert "Refund me or I open a dispute." in page
        assert "sha256sum -c MANIFEST.json.sha256" in " ".join(page.split())  # the footer
    assert "Sent (UIDVALIDITY 7, UID" in text


def test_timeline_without_zone_shows_utc_only(bundle: Path) -> None:
    text = read_zip(bundle)["timeline.txt"].decode()
    assert "Times are in UTC." in text
    assert " CET" not in text


def test_attacker_text_is_escaped_and_inert_in_the_html(store: st.Store, tmp_path: Path) -> None:
    raws = [
        message(
            1,
            subject=HOSTILE,
            body=f'{HOSTILE}\n<a href="javascript:alert(1)">click</a> www.evil.example',
            attachment=('"><svg onload=alert(1)>.pdf', b"%PDF-1.4"),
        )
    ]
    seed(store, raws)
    out = tmp_path / "bundle.zip"
    export(store, out)
    html = read_zip(out)["timeline.html"].decode()
    text = read_zip(out)["timeline.txt"].decode()

    tags = Tags()
    tags.feed(html)
    assert tags.names <= {
        "html", "head", "meta", "title", "body", "div", "h1", "h2", "p", "strong", "span",
        "table", "tr", "td", "ul", "li", "pre", "code",
    }  # fmt: skip
    assert tags.attributes <= {"lang", "charset", "http-equiv", "content", "name", "style"}
    assert "&lt;script&gt;" in html
    lowered = html.lower()
    assert "javascript:" not in lowered and "javascript[:]" in lowered
    assert "default-src 'none'" in html  # a Content-Security-Policy, for good measure
    for page in (html, text):
        assert "\u202e" not in page and "\x1b" not in page
        assert "hxxps://pay[.]evil[.]example/login" in page
        assert "www[.]evil[.]example" in page


def test_long_text_is_shortened_in_the_timeline_only(store: st.Store, tmp_path: Path) -> None:
    body = "\n".join(f"line {i} " + "x" * 60 for i in range(1000))
    raw = message(1, body=body)
    seed(store, [raw])
    out = tmp_path / "bundle.zip"
    export(store, out)
    files = read_zip(out)
    assert "shortened here" in files["timeline.txt"].decode()
    assert files["messages/001-2026-11-20-logo-design.eml"] == raw


# --------------------------------------------------------------------------- from the server


def second_from_server(
    store: st.Store, out: Path, served: Callable[[bytes], bytes] = lambda raw: raw
) -> tuple[list[bytes], list[st.StoredMessage], FakeServer, ex.ExportResult]:
    """The dispute thread with no stored copy of its second message, whose bytes the
    server gives as ``served`` makes them; exported to ``out``."""
    raws = dispute_thread()
    rows = seed(store, raws, keep=[True, False, True])
    server = FakeServer()
    server.put(rows[1], served(raws[1]))
    return raws, rows, server, export(store, out, server)


def test_message_without_stored_copy_is_fetched_from_the_server(
    store: st.Store, tmp_path: Path
) -> None:
    out = tmp_path / "bundle.zip"

    raws, rows, server, result = second_from_server(store, out)

    assert [m.status for m in result.messages] == ["included"] * 3
    assert server.calls == [("default", "INBOX", 7, [rows[1].uid])]
    manifest = json.loads(read_zip(out)["MANIFEST.json"])
    assert [m["obtained_from"] for m in manifest["messages"]] == ["store", "imap", "store"]
    assert read_zip(out)[manifest["messages"][1]["file"]] == raws[1]


def test_server_copy_with_other_bytes_is_refused_and_listed_missing(
    store: st.Store, tmp_path: Path
) -> None:
    out = tmp_path / "bundle.zip"

    _raws, rows, _server, result = second_from_server(
        store, out, lambda raw: raw.replace(b"final files", b"draft files")
    )

    assert [m.status for m in result.messages] == ["included", "missing", "included"]
    assert "is not the message inbox-guard read" in result.messages[1].note
    manifest = json.loads(read_zip(out)["MANIFEST.json"])
    missing = manifest["messages"][1]
    assert missing["status"] == "missing" and missing["file"] is None
    assert missing["sha256"] is None and missing["recorded_sha256"] == rows[1].content_hash
    assert missing["imap"]["uid"] == rows[1].uid
    assert "not the message" in missing["note"]
    assert len([n for n in read_zip(out) if n.startswith("messages/")]) == 2


def test_message_gone_from_server_and_store_is_listed_missing_with_reason(
    store: st.Store, tmp_path: Path
) -> None:
    seed(store, dispute_thread(), keep=[True, True, False])
    out = tmp_path / "bundle.zip"

    result = export(store, out, FakeServer())

    gone = result.messages[2]
    assert gone.status == "missing" and gone.file is None
    assert "no copy in the store" in gone.note and "no longer on the server" in gone.note
    files = read_zip(out)
    assert "MISSING FROM THIS BUNDLE" in files["timeline.txt"].decode()
    assert "NOT COMPLETE" in files["README.txt"].decode()
    report = ex.verify_bundle(out)
    assert report.missing == 1 and report.messages == 2
    assert len(report.problems) == 1 and "message 3 of 3" in report.problems[0]
    assert "listed as missing" in report.problems[0]
    report = ex.verify_bundle(out, allow_missing=True)
    assert report.ok and report.missing == 1 and report.messages == 2


def test_unreachable_server_is_the_reason_given(store: st.Store, tmp_path: Path) -> None:
    seed(store, dispute_thread(), keep=[False, False, True])
    server = FakeServer(unavailable="the IMAP server could not be reached: refused")

    result = export(store, tmp_path / "bundle.zip", server)

    assert [m.status for m in result.messages] == ["missing", "missing", "included"]
    assert all("could not be reached" in m.note for m in result.incomplete)
    assert len(server.calls) == 1  # one request per folder


def test_corrupted_store_copy_is_not_exported(store: st.Store, tmp_path: Path) -> None:
    raws = dispute_thread()
    rows = seed(store, raws)
    with store.session() as session:
        row = session.get(st.Evidence, rows[0].content_hash)
        assert row is not None
        row.data = flip(raws[0])
        session.add(row)
    server = FakeServer()
    server.put(rows[0], raws[0])

    result = export(store, tmp_path / "bundle.zip", server)

    assert result.messages[0].status == "included"  # the server still had the original
    manifest = json.loads(read_zip(tmp_path / "bundle.zip")["MANIFEST.json"])
    assert manifest["messages"][0]["obtained_from"] == "imap"
    assert "does not match its recorded SHA-256" in manifest["messages"][0]["note"]

    result = export(store, tmp_path / "again.zip", FakeServer())
    assert result.messages[0].status == "missing"
    assert "does not match its recorded SHA-256" in result.messages[0].note


def test_big_message_read_only_in_part_is_completed_from_the_server(
    store: st.Store, tmp_path: Path
) -> None:
    big = message(1, body="start " + "y" * 5000)
    prefix = big[:1000]  # what a scan with imap.max_message_bytes = 1000 hashed and kept
    rows = seed(store, [big], kept_bytes={0: prefix})
    server = FakeServer()
    server.put(rows[0], big)

    whole = export(store, tmp_path / "whole.zip", server, prefix_bytes={"default": 1000})
    assert whole.messages[0].status == "included"
    assert "only the first 1000 bytes" in whole.messages[0].note
    assert read_zip(tmp_path / "whole.zip")["messages/001-2026-11-20-logo-design.eml"] == big
    entry = json.loads(read_zip(tmp_path / "whole.zip")["MANIFEST.json"])["messages"][0]
    assert entry["recorded_sha256"] == sha(prefix) and entry["recorded_bytes"] == 1000
    report = ex.verify_bundle(tmp_path / "whole.zip")  # checked on the bytes the guard read
    assert report.ok and report.messages == 1 and report.prefix_only == 1

    part = export(store, tmp_path / "part.zip", FakeServer(), prefix_bytes={"default": 1000})
    assert part.messages[0].status == "partial"
    assert read_zip(tmp_path / "part.zip")["messages/001-2026-11-20-logo-design.eml"] == prefix
    report = ex.verify_bundle(tmp_path / "part.zip")
    assert report.ok and report.partial == 1


# --------------------------------------------------------------------------- finding threads


def threads_for(store: st.Store, **kw: str) -> list[str]:
    with store.session() as session:
        return [m.thread_id for m in ex.find_threads(session, **kw)]


@pytest.fixture
def three_threads(store: st.Store) -> st.Store:
    seed(store, [message(1, subject="Logo design")], thread_id="t:aaaa1111")
    seed(
        store,
        [message(2, subject="Réunion: FACTURE impayée", sender="ana@studio.example")],
        thread_id="t:aaaa2222",
    )
    seed(
        store,
        [message(3, subject="Website", to="Jake@Client.example")],
        thread_id="gm:1844674407",
    )
    return store


def test_thread_found_by_id_prefix_with_or_without_its_kind(three_threads: st.Store) -> None:
    assert threads_for(three_threads, thread="t:aaaa1111") == ["t:aaaa1111"]
    assert threads_for(three_threads, thread="t:aaaa1") == ["t:aaaa1111"]
    assert threads_for(three_threads, thread="aaaa2") == ["t:aaaa2222"]
    assert threads_for(three_threads, thread="18446") == ["gm:1844674407"]
    assert threads_for(three_threads, thread="aaaa") == ["t:aaaa1111", "t:aaaa2222"]
    assert threads_for(three_threads, thread="t:zzzz") == []


def test_thread_found_by_subject_in_any_case(three_threads: st.Store) -> None:
    assert threads_for(three_threads, query="facture IMPAYÉE") == ["t:aaaa2222"]
    assert threads_for(three_threads, query="logo") == ["t:aaaa1111"]
    assert threads_for(three_threads, query="50%_") == []  # no SQL wildcards


def test_thread_found_by_correspondent_address(three_threads: st.Store) -> None:
    assert threads_for(three_threads, sender="ANA@studio.example") == ["t:aaaa2222"]
    # a recipient counts too (the freelancer's own replies to the client)
    assert threads_for(three_threads, sender="jake@client.example") == [
        "t:aaaa1111",
        "gm:1844674407",
    ]
    assert threads_for(three_threads, sender="@studio.example") == ["t:aaaa2222"]
    assert threads_for(three_threads, sender="jake@client.example", query="web") == [
        "gm:1844674407"
    ]


def test_thread_found_in_one_account_only(store: st.Store) -> None:
    seed(store, [message(1)], thread_id="t:same", account="upwork")
    seed(store, [message(1)], thread_id="t:same", account="fiverr")
    with store.session() as session:
        both = ex.find_threads(session, thread="t:same")
        one = ex.find_threads(session, thread="t:same", account="fiverr")
    assert sorted(m.account for m in both) == ["fiverr", "upwork"]
    assert [(m.account, m.thread_id) for m in one] == [("fiverr", "t:same")]


def test_server_of_an_account_no_longer_configured_is_not_guessed() -> None:
    from guard.config import Config

    config = Config.model_validate({"imap": {"host": "127.0.0.1", "tls": "none", "username": "me"}})
    source = ex.ImapSource(config)
    with pytest.raises(ex.SourceUnavailable, match="'gone' is not in the configuration"):
        source.fetch("gone", "INBOX", 1, [1])
    source.close()


def test_several_threads_go_into_one_bundle(three_threads: st.Store, tmp_path: Path) -> None:
    with three_threads.session() as session:
        matches = ex.find_threads(session, thread="aaaa")
    out = tmp_path / "both.zip"
    result = ex.export_bundle(three_threads, matches, out, source=None, now=NOW)
    manifest = json.loads(read_zip(out)["MANIFEST.json"])
    assert [t["thread_id"] for t in manifest["threads"]] == ["t:aaaa1111", "t:aaaa2222"]
    assert len(result.messages) == 2 and ex.verify_bundle(out).ok
    text = read_zip(out)["timeline.txt"].decode()
    assert "Conversation 2: Réunion: FACTURE impayée" in text
    assert "    Conversation: 2\n" in text


# --------------------------------------------------------------------------- verify


def test_verify_accepts_an_untouched_bundle(bundle: Path) -> None:
    report = ex.verify_bundle(bundle)
    assert report.ok, report.problems
    assert (report.messages, report.files, report.missing) == (3, 8, 0)


def test_verify_names_the_altered_message(bundle: Path) -> None:
    name = "messages/002-2026-11-20-logo-design.eml"
    rewrite_zip(bundle, lambda files: {**files, name: flip(files[name])})

    report = ex.verify_bundle(bundle)

    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith(f"{name}: altered")
    assert "message 2 of 3" in problem and "<m2@client.example>" in problem
    assert report.messages == 2


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("timeline.html", "timeline.html: altered"),
        ("timeline.txt", "timeline.txt: altered"),
        ("README.txt", "README.txt: altered"),
        ("MANIFEST.json", "MANIFEST.json: altered"),
        ("MANIFEST.json.sha256", "MANIFEST.json.sha256: line 1 is not '<sha256>  <file>'"),
    ],
)
def test_verify_catches_one_changed_byte_in_any_file(
    bundle: Path, target: str, expected: str
) -> None:
    at = 64 if target == "MANIFEST.json.sha256" else 10  # there: the space after the hash
    rewrite_zip(bundle, lambda files: {**files, target: flip(files[target], at=at)})

    report = ex.verify_bundle(bundle)

    assert not report.ok
    assert report.problems[0].startswith(expected), report.problems


def test_verify_catches_another_hash_in_the_sha256_file(bundle: Path) -> None:
    def other_hash(files: dict[str, bytes]) -> dict[str, bytes]:
        data = files["MANIFEST.json.sha256"]
        digit = b"0" if data[:1] != b"0" else b"1"
        return {**files, "MANIFEST.json.sha256": digit + data[1:]}

    rewrite_zip(bundle, other_hash)
    problems = ex.verify_bundle(bundle).problems
    assert problems == [
        "MANIFEST.json: altered (its SHA-256 is not the one in MANIFEST.json.sha256; "
        "one of the two was changed)"
    ]


def test_verify_catches_a_manifest_edited_to_match_an_altered_message(bundle: Path) -> None:
    name = "messages/003-2026-11-20-logo-design.eml"

    def forge(files: dict[str, bytes]) -> dict[str, bytes]:
        forged = files[name].replace(b"Refund me", b"Thanks you")
        manifest = json.loads(files["MANIFEST.json"])
        manifest["messages"][2]["sha256"] = sha(forged)
        return {**files, name: forged, "MANIFEST.json": json.dumps(manifest).encode()}

    rewrite_zip(bundle, forge)
    problems = ex.verify_bundle(bundle).problems
    assert problems[0].startswith("MANIFEST.json: altered")
    assert any(name in p for p in problems[1:])


def test_verify_reports_a_missing_file(bundle: Path) -> None:
    name = "messages/001-2026-11-20-logo-design.eml"
    rewrite_zip(bundle, lambda files: {k: v for k, v in files.items() if k != name})

    report = ex.verify_bundle(bundle)

    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{name}: missing from the bundle (message 1 of 3")


def test_verify_reports_an_extra_file(bundle: Path) -> None:
    rewrite_zip(bundle, lambda files: {**files, "messages/004-late-addition.eml": b"From: x\r\n"})

    report = ex.verify_bundle(bundle)

    assert report.problems == [
        "messages/004-late-addition.eml: extra file, not listed in MANIFEST.json"
    ]


def test_verify_reports_zip_slip_names_without_extracting_anything(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = tmp_path / "inner" / "evil.zip"
    evil.parent.mkdir()
    rewrite_zip(
        bundle, lambda files: {**files, "../x": b"escaped", "/etc/y": b"absolute"}, out=evil
    )

    def no_extract(*_args: object, **_kw: object) -> None:
        raise AssertionError("verify must not extract")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extract)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extract)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cwd = Path.cwd()
    monkeypatch.chdir(evil.parent)

    report = ex.verify_bundle(evil)

    monkeypatch.chdir(cwd)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "x").exists()
    assert len(report.problems) == 2
    assert all("unsafe name" in p for p in report.problems)
    assert report.problems[0].startswith("../x:") or report.problems[1].startswith("../x:")


def test_verify_reports_a_manifest_that_points_outside_the_bundle(bundle: Path) -> None:
    def point_out(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = json.loads(files["MANIFEST.json"])
        manifest["files"][0]["file"] = "../../etc/passwd"
        data = json.dumps(manifest).encode()
        sums = files["MANIFEST.json.sha256"].decode().splitlines()
        sums[0] = f"{sha(data)}  MANIFEST.json"
        sums = [s.replace("timeline.html", "../../etc/passwd") for s in sums]
        return {**files, "MANIFEST.json": data, "MANIFEST.json.sha256": "\n".join(sums).encode()}

    rewrite_zip(bundle, point_out)
    problems = ex.verify_bundle(bundle).problems
    assert problems[0] == "../../etc/passwd: unsafe file name in MANIFEST.json"
    assert "timeline.html: extra file, not listed in MANIFEST.json" in problems


def test_verify_rejects_files_that_are_not_readable_zips(tmp_path: Path, bundle: Path) -> None:
    text = tmp_path / "notes.zip"
    text.write_text("these are not the files you are looking for\n")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")

    for path in (text, truncated, empty):
        with pytest.raises(ex.BundleError, match="not a readable zip file"):
            ex.verify_bundle(path)
    with pytest.raises(ex.BundleError, match="no such file"):
        ex.verify_bundle(tmp_path / "nowhere.zip")


def test_verify_treats_a_damaged_entry_as_a_corrupt_zip(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    # a byte in the middle of the first entry's compressed data: the CRC check fails
    start = data.index(b"messages/001") + 60
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(flip(data, at=start))
    with pytest.raises(ex.BundleError, match="corrupt"):
        ex.verify_bundle(damaged)


def test_verify_of_a_non_bundle_zip_says_so(tmp_path: Path) -> None:
    other = tmp_path / "photos.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("cat.jpg", b"\xff\xd8")
    problems = ex.verify_bundle(other).problems
    assert problems[0] == "MANIFEST.json: missing from the bundle"
    assert "cat.jpg: extra file, not listed in MANIFEST.json" in problems


# --------------------------------------------------------------------------- what verify proves


def reseal(files: dict[str, bytes], manifest: dict[str, object]) -> dict[str, bytes]:
    """What someone rebuilding a bundle would do: a new MANIFEST.json and a
    MANIFEST.json.sha256 recomputed to match it and the files it lists."""
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    listed = [m for m in manifest["messages"] if m["file"]]  # type: ignore[attr-defined]
    listed += manifest["files"]  # type: ignore[operator]
    lines = [f"{sha(data)}  MANIFEST.json"] + [f"{e['sha256']}  {e['file']}" for e in listed]
    return {**files, "MANIFEST.json": data, "MANIFEST.json.sha256": "\n".join(lines).encode()}


def manifest_of(files: dict[str, bytes]) -> dict[str, Any]:
    return dict(json.loads(files["MANIFEST.json"]))


def verify_lines(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str], list[str]]:
    status = main(["verify", *args])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


THIRD = "messages/003-2026-11-20-logo-design.eml"


def test_edited_message_with_recomputed_hashes_is_not_the_recorded_one(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noted = sha(read_zip(bundle)["MANIFEST.json"])  # what the freelancer wrote down

    def forge(files: dict[str, bytes]) -> dict[str, bytes]:
        forged = files[THIRD].replace(b"Refund me or I open a dispute", b"Thanks, all good")
        manifest = manifest_of(files)
        entry = manifest["messages"][2]
        entry["sha256"], entry["size"] = sha(forged), len(forged)
        return reseal({**files, THIRD: forged}, manifest)

    rewrite_zip(bundle, forge)

    report = ex.verify_bundle(bundle)
    assert report.problems == [
        f"{THIRD}: not the message inbox-guard recorded when it first saw it (its SHA-256 "
        "is not the recorded_sha256 in MANIFEST.json) (message 3 of 3, 2026-11-20T09:03:00Z, "
        "from jake@client.example, Message-ID <m3@client.example>)"
    ]
    assert report.messages == 2

    # the whole bundle rebuilt, recorded_sha256 too: only the noted hash can tell
    def rebuild(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        entry = manifest["messages"][2]
        entry["recorded_sha256"] = entry["sha256"]
        return reseal(files, manifest)

    rewrite_zip(bundle, rebuild)
    assert ex.verify_bundle(bundle).ok
    status, out, err = verify_lines([str(bundle), "--expect", noted], capsys)
    assert status == 1
    got = sha(read_zip(bundle)["MANIFEST.json"])
    assert out[0] == f"MANIFEST.json SHA-256 {got} (NOT the expected one)"
    assert err == [
        f"inbox-guard: error: MANIFEST.json: its SHA-256 is {got}, not the expected {noted}: "
        "this is not the bundle whose hash was noted"
    ]


def test_message_deleted_and_marked_missing_fails_unless_allowed(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def delete(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        entry = manifest["messages"][2]
        entry.update(status="missing", file=None, sha256=None, size=None, note="gone")
        manifest["counts"].update(included=2, missing=1)
        return reseal({k: v for k, v in files.items() if k != THIRD}, manifest)

    rewrite_zip(bundle, delete)

    status, out, err = verify_lines([str(bundle)], capsys)
    assert status == 1
    assert err == [
        "inbox-guard: error: MANIFEST.json: message 3 of 3, 2026-11-20T09:03:00Z, from "
        "jake@client.example, Message-ID <m3@client.example> is listed as missing, so the "
        "bundle does not hold it (--allow-missing accepts that)"
    ]
    assert out[-1].startswith("FAILED: 1 problem(s)")
    status, out, err = verify_lines([str(bundle), "--allow-missing"], capsys)
    assert (status, err) == (0, [])
    assert out[-1] == (
        "OK: 2 messages, 7 files verified (1 message(s) listed as missing in MANIFEST.json)"
    )


def test_recorded_sha256_that_differs_from_the_file_is_reported(bundle: Path) -> None:
    def other_record(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        manifest["messages"][0]["recorded_sha256"] = sha(b"what the guard really saw")
        return reseal(files, manifest)

    rewrite_zip(bundle, other_record)

    problems = ex.verify_bundle(bundle).problems
    assert len(problems) == 1
    assert problems[0].startswith(
        "messages/001-2026-11-20-logo-design.eml: not the message inbox-guard recorded"
    )


def test_expect_compares_the_manifest_hash_noted_at_export_time(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noted = sha(read_zip(bundle)["MANIFEST.json"])

    status, out, err = verify_lines([str(bundle), "--expect", noted.upper()], capsys)
    assert (status, err) == (0, [])
    assert out == [
        f"MANIFEST.json SHA-256 {noted} (the expected one)",
        "OK: 3 messages, 8 files verified",
    ]

    other = sha(b"another bundle")
    status, out, err = verify_lines([str(bundle), "--expect", other], capsys)
    assert status == 1
    assert err == [
        f"inbox-guard: error: MANIFEST.json: its SHA-256 is {noted}, not the expected "
        f"{other}: this is not the bundle whose hash was noted"
    ]

    status, _out, err = verify_lines([str(bundle), "--expect", "abc"], capsys)
    assert status == 2 and err == [
        "inbox-guard: error: --expect must be a SHA-256: 64 hexadecimal digits"
    ]


# --------------------------------------------------------------------------- unsafe members


def deflated(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@dataclasses.dataclass
class Raw:
    """One member of a zip written byte by byte, headers saying whatever a test wants."""

    name: str
    data: bytes  # as stored in the zip (already compressed for method 8)
    method: int = 8
    crc: int = 0
    size: int = 0  # the uncompressed size both headers declare
    flags: int = 0
    mode: int = 0o100644  # Unix mode in the external attributes

    @classmethod
    def of(cls, name: str, content: bytes, **kw: Any) -> Raw:
        return cls(name, deflated(content), crc=zlib.crc32(content), size=len(content), **kw)


def write_raw_zip(path: Path, members: Sequence[Raw]) -> Path:
    body, central = b"", b""
    for m in members:
        name = m.name.encode()
        fields = (m.flags, m.method, 0, 0x5B21, m.crc, len(m.data), m.size, len(name))
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", (3 << 8) | 20, 20, *fields, 0, 0, 0, 0,
            m.mode << 16, len(body),
        )  # fmt: skip
        central += name
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *fields, 0) + name + m.data
    eocd = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0
    )
    path.write_bytes(body + central + eocd)
    return path


def raw_bundle(bundle: Path, *extra: Raw, skip: str = "") -> Path:
    """The bundle's members written again, with ``extra`` members added."""
    files = read_zip(bundle)
    members = [Raw.of(n, d) for n, d in files.items() if n != skip]
    return write_raw_zip(bundle, [*members, *extra])


def test_symlink_member_is_refused_even_when_the_manifest_agrees(bundle: Path) -> None:
    target = b"/etc/hostname"  # unzip would make timeline.html -> /etc/hostname

    def point(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        entry = next(f for f in manifest["files"] if f["file"] == "timeline.html")
        entry["sha256"], entry["size"] = sha(target), len(target)
        return reseal({**files, "timeline.html": target}, manifest)

    rewrite_zip(bundle, point)
    files = read_zip(bundle)
    raw_bundle(bundle, Raw.of("timeline.html", target, mode=0o120777), skip="timeline.html")
    assert set(read_zip(bundle)) == set(files)

    report = ex.verify_bundle(bundle)

    assert report.problems == [
        "timeline.html: a symbolic link, not a file (unpacked, it could point anywhere)"
    ]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("C:/timeline.txt", "a drive letter"),
        ("C:\\timeline.txt", "a drive letter"),
        ("c:timeline.txt", "a drive letter"),
        (".timeline.txt", "a dot-file name"),
        ("messages/.timeline.txt", "a dot-file name"),
        ("CON.txt", "a Windows device name"),
    ],
)
def test_unsafe_names_are_refused_even_when_the_manifest_lists_them(
    bundle: Path, name: str, reason: str
) -> None:
    def rename(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        next(f for f in manifest["files"] if f["file"] == "timeline.txt")["file"] = name
        content = files.pop("timeline.txt")
        return reseal({**files, name: content}, manifest)

    rewrite_zip(bundle, rename)

    assert ex.verify_bundle(bundle).problems == [f"{name}: unsafe name ({reason})"]


def test_names_differing_only_in_case_are_refused(bundle: Path) -> None:
    def add_twin(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        twin = b"a second timeline that would overwrite the first on Windows or macOS"
        manifest["files"].append({"file": "Timeline.TXT", "sha256": sha(twin), "size": len(twin)})
        return reseal({**files, "Timeline.TXT": twin}, manifest)

    rewrite_zip(bundle, add_twin)

    assert ex.verify_bundle(bundle).problems == [
        "Timeline.TXT: differs from timeline.txt only in letter case (unpacked on Windows or "
        "macOS, one would overwrite the other)"
    ]


def test_duplicate_names_are_refused(bundle: Path, tmp_path: Path) -> None:
    files = read_zip(bundle)
    twice = tmp_path / "twice.zip"
    write_raw_zip(
        twice,
        [Raw.of(n, d) for n, d in files.items()] + [Raw.of("README.txt", files["README.txt"])],
    )
    assert ex.verify_bundle(twice).problems == ["README.txt: appears more than once in the zip"]


def test_a_name_that_is_a_file_and_a_folder_is_refused(bundle: Path) -> None:
    rewrite_zip(bundle, lambda files: {**files, "timeline.txt/x": b"x"})
    assert "timeline.txt: is both a file and a folder in the zip" in (
        ex.verify_bundle(bundle).problems
    )


def damaged_readme(files: dict[str, bytes]) -> Raw:
    member = Raw.of("README.txt", files["README.txt"])
    member.crc ^= 1  # the sizes agree with the manifest; the content is not what was zipped
    return member


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda files: Raw.of("messages/extra.eml", b"From: x\r\n", flags=0x1), "encrypted"),
        (
            lambda files: Raw("timeline.txt", b"\x28\xb5\x2f\xfd", method=93, size=4),
            "compressed with method 93",
        ),
        (damaged_readme, "fails its CRC check"),
    ],
)
def test_unreadable_member_is_exit_2_with_one_line(
    bundle: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[dict[str, bytes]], Raw],
    reason: str,
) -> None:
    member = make(read_zip(bundle))
    raw_bundle(bundle, member, skip=member.name)

    status, out, err = verify_lines([str(bundle)], capsys)

    assert status == 2 and out == []
    assert len(err) == 1
    assert err[0].startswith(f"inbox-guard: error: '{bundle}' is corrupt or unsafe: cannot read ")
    assert f"{member.name}: {reason}" in err[0]


class Inflation:
    """Counts the bytes every zlib decompressor of the process hands out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = 0
        real = zlib.decompressobj
        counter = self

        class Counting:
            def __init__(self, *args: Any) -> None:
                self._d = real(*args)

            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                out = self._d.decompress(data, max_length)
                counter.total += len(out)
                return out

            def flush(self, *args: Any) -> bytes:
                out = self._d.flush(*args)
                counter.total += len(out)
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(self._d, name)

        monkeypatch.setattr(zlib, "decompressobj", Counting)


BOMB = 64 * 1024 * 1024  # zeros: 64 MiB that deflate to about 64 KB


def test_member_larger_than_the_manifest_says_is_never_inflated(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bomb(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        entry = next(f for f in manifest["files"] if f["file"] == "README.txt")
        entry["size"] = 1
        return reseal({**files, "README.txt": bytes(BOMB)}, manifest)

    rewrite_zip(bundle, bomb)
    inflation = Inflation(monkeypatch)

    problems = ex.verify_bundle(bundle).problems

    assert problems[0] == (
        f"README.txt: altered (its size in the zip, {BOMB} bytes, is not the 1 bytes in "
        "MANIFEST.json)"
    )
    assert inflation.total < 1024 * 1024  # the other files only


def test_member_whose_headers_say_one_byte_but_which_inflates_large_is_stopped(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def one_byte(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = manifest_of(files)
        entry = next(f for f in manifest["files"] if f["file"] == "README.txt")
        entry["sha256"], entry["size"] = sha(b"\0"), 1
        return reseal({**files, "README.txt": b"\0"}, manifest)

    rewrite_zip(bundle, one_byte)  # consistent so far: a one-byte README.txt
    bomb = Raw("README.txt", deflated(bytes(BOMB)), crc=zlib.crc32(b"\0"), size=1)
    raw_bundle(bundle, bomb, skip="README.txt")
    inflation = Inflation(monkeypatch)

    status, _out, err = verify_lines([str(bundle)], capsys)

    assert status == 2 and len(err) == 1
    assert "README.txt: inflates beyond the 1 bytes its zip header declares" in err[0]
    assert inflation.total < 1024 * 1024


def test_rebuilt_zip_without_anything_odd_still_verifies(bundle: Path) -> None:
    raw_bundle(bundle)  # the raw writer itself makes a zip verify accepts
    assert ex.verify_bundle(bundle).ok


# --------------------------------------------------------------------------- the verify command


def test_verify_command_exit_status_and_lines(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(bundle)]) == 0
    manifest_sha = sha(read_zip(bundle)["MANIFEST.json"])
    assert capsys.readouterr().out == (
        f"MANIFEST.json SHA-256 {manifest_sha} (compare it with the one noted when the "
        "bundle was made, or use --expect)\nOK: 3 messages, 8 files verified\n"
    )

    name = "messages/001-2026-11-20-logo-design.eml"
    altered = tmp_path / "altered.zip"
    shutil.copy(bundle, altered)
    rewrite_zip(
        altered,
        lambda files: {**files, name: flip(files[name]), "extra.txt": b"x\x1b[31m"},
    )
    assert main(["verify", str(altered)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"inbox-guard: error: {name}: altered")
    assert lines[1] == "inbox-guard: error: extra.txt: extra file, not listed in MANIFEST.json"
    assert captured.out.splitlines()[1].startswith("FAILED: 2 problem(s)")

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    assert main(["verify", str(junk)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not a readable zip file" in err


def test_verify_shows_hostile_entry_names_safely(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rewrite_zip(bundle, lambda files: {**files, "\x1b]0;owned\x07\u202eevil": b""})
    assert main(["verify", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err and "\\x1b" in err
    assert len(err.splitlines()) == 1
    assert re.search(r"unsafe name", err)


def test_verify_accepts_the_bundle_unpacked_and_zipped_again(bundle: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(again, "w") as dst:
        dst.writestr("messages/", b"")  # `zip -r` adds folder entries
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert ex.verify_bundle(again).ok


# --------------------------------------------------------------------------- the export command


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def config_file(store: st.Store, tmp_path: Path) -> Path:
    """A configuration whose IMAP server refuses connections (nothing listens)."""
    secret = tmp_path / "imap-password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    path = tmp_path / "config.toml"
    path.write_text(
        "[imap]\n"
        'host = "127.0.0.1"\n'
        f"port = {closed_port()}\n"
        'tls = "none"\n'
        'username = "me"\n'
        f'password_file = "{secret}"\n'
        "timeout = 5\n"
        "[store]\n"
        f'url = "{store.url}"\n'
    )
    return path


def test_export_command_writes_a_bundle_that_verifies(
    store: st.Store, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(store, dispute_thread())
    out = tmp_path / "dispute.zip"

    status = main(["export", "0123456789", "--out", str(out), "--config", str(config_file)])

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""
    assert captured.out.startswith(f"wrote {out}: 3 of 3 message(s), 8 files; MANIFEST.json")
    assert main(["verify", str(out)]) == 0


def test_export_command_lists_the_threads_when_several_match(
    three_threads: st.Store, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.zip"

    status = main(["export", "aaaa", "--out", str(out), "--config", str(config_file)])

    err = capsys.readouterr().err.splitlines()
    assert status == 2 and not out.exists()
    assert err[0].startswith("inbox-guard: error: 2 threads match id 'aaaa'")
    assert "--all" in err[0]
    assert err[1].startswith("  t:aaaa1111  2026-11-20  1 message(s)  [medium]  Logo design")
    assert err[2].startswith("  t:aaaa2222") and "FACTURE" in err[2]

    status = main(["export", "aaaa", "--all", "--out", str(out), "--config", str(config_file)])
    assert status == 0 and ex.verify_bundle(out).ok


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["t:nothing"], "no thread in the store matches id 't:nothing'"),
        (["--query", "nothing like it"], "matches subject 'nothing like it'"),
        (["aaaa", "--query", "logo"], "not both"),
        ([], "say which thread"),
        (["--sender", " "], "--sender must not be empty"),
    ],
)
def test_export_command_usage_errors(
    three_threads: st.Store,
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "x.zip"
    status = main(["export", *args, "--out", str(out), "--config", str(config_file)])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_export_command_refuses_to_replace_a_file(
    store: st.Store, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(store, dispute_thread())
    out = tmp_path / "dispute.zip"
    out.write_bytes(b"an earlier bundle")
    args = ["export", "t:0123", "--out", str(out), "--config", str(config_file)]

    assert main(args) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier bundle"
    assert main([*args, "--force"]) == 0 and ex.verify_bundle(out).ok


def test_export_command_exits_1_naming_each_message_it_could_not_include(
    store: st.Store, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = seed(store, dispute_thread(), keep=[True, False, True])
    out = tmp_path / "dispute.zip"

    status = main(["export", "t:0123", "--out", str(out), "--config", str(config_file)])

    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert status == 1
    assert len(err) == 2
    assert err[0].startswith(
        f"inbox-guard: warning: message 2 (INBOX UID {rows[1].uid}, <m2@client.example>) "
        "is missing from the bundle: no copy in the store; the IMAP server could not be reached"
    )
    assert err[1].startswith("inbox-guard: error: the bundle is incomplete: 1 of 3 message(s)")
    assert captured.out.startswith(f"wrote {out}: 2 of 3 message(s)")
    report = ex.verify_bundle(out, allow_missing=True)  # what is in it is still checkable
    assert report.ok and report.missing == 1


def test_imprecise_server_size_does_not_make_a_kept_copy_partial(
    store: st.Store, tmp_path: Path
) -> None:
    raws = dispute_thread()
    rows = seed(store, raws)
    with store.session() as session:  # some servers report RFC822.SIZE a little off
        row = session.get(st.StoredMessage, rows[0].id)
        assert row is not None
        row.size += 12
        session.add(row)
    server = FakeServer(unavailable="should not be asked")

    result = export(
        store, tmp_path / "bundle.zip", server, prefix_bytes={"default": 25 * 1024 * 1024}
    )

    assert [m.status for m in result.messages] == ["included"] * 3
    assert server.calls == []


def test_export_command_says_when_the_hash_could_not_be_mailed(
    store: st.Store, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(store, dispute_thread())
    port = closed_port()
    with config_file.open("a") as fh:
        fh.write(
            f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\ntimeout = 5\n'
            '[digest]\nto = "me@home.example"\nfrom = "guard@work.example"\n'
        )
    out = tmp_path / "dispute.zip"

    status = main(["export", "t:0123", "--out", str(out), "--mail-hash", "-c", str(config_file)])

    captured = capsys.readouterr()
    assert status == 1 and ex.verify_bundle(out).ok  # the bundle itself is fine
    assert captured.err.splitlines() == [
        "inbox-guard: error: the bundle was written, but its hash could not be mailed: "
        f"cannot reach 127.0.0.1:{port} while connecting: Connection refused"
    ]
