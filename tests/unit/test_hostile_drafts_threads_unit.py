"""Hostile headers against reply drafts and threading (issue 11, findings 1 and 8).

Every crafted message is written here, byte by byte. Drafts are checked by parsing the
composed bytes back with the email library (both the modern and the compat32 policy, as
mail programs differ); threading is checked on a real SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session
from support.drafts import DRAFT_HEADER_NAMES, header_names

from guard import store as st
from guard.mail import msgid, parse_message
from guard.mailbox import threads
from guard.reports import drafts

CRLF_WORD = (
    "=?utf-8?q?<id@x.example>=0D=0ABcc:_attacker@evil.example=0D=0AContent-Type:_text/html"
    "=0D=0A=0D=0A<p>pay_me_at_evil.example</p><!--?="
)


def raw_mail(headers: list[tuple[str, str]], body: str = "Hello") -> bytes:
    lines = [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


def b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


PAYMENT = "Let's skip the platform fees: I can pay you directly by PayPal, send me your email."


def hostile_request() -> bytes:
    # Message-ID and References are encoded words hiding CR/LF, a Bcc, a Content-Type and
    # an HTML body; the Subject is encoded twice, so one decoding leaves another one.
    return raw_mail(
        [
            ("From", "Client Person <client@client.example>"),
            ("To", "Attacker Choice <attacker@evil.example>"),
            ("Subject", b_word("=?utf-8?q?Logo=0D=0ABcc:_sub@evil.example?=")),
            ("Date", "Mon, 02 Nov 2026 10:00:00 +0000"),
            ("Message-ID", CRLF_WORD),
            ("In-Reply-To", CRLF_WORD),
            (
                "References",
                "<ok-1@client.example> =?utf-8?q?<r@x>=0D=0ABcc:_ref@evil.example?= "
                "<caf\u00e9@client.example> <ok-2@client.example>",
            ),
        ],
        PAYMENT,
    )


def compose(raw: bytes, address: str = "alex@work.example") -> tuple[bytes, str]:
    msg = parse_message(raw)
    cand = drafts.candidate("t:1", msg, ("off_platform_payment",), address)
    assert cand is not None
    body = drafts.render_body("en", msg.from_.name if msg.from_ else "", "Upwork", None)
    own = drafts.draft_message_id("default", "t:1", cand.from_address.rpartition("@")[2])
    return drafts.compose(cand, "en", "Upwork", None, own), body


# --------------------------------------------------------------------------- Message-IDs


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("<abc.123@mail.example>", "<abc.123@mail.example>"),
        ("  <CAF=x+y_z-1@mail.gmail.com>  ", "<CAF=x+y_z-1@mail.gmail.com>"),
        ("<a@[192.0.2.1]>", "<a@[192.0.2.1]>"),
        ("<abc@mail.example> (added by the relay)", "<abc@mail.example>"),
        ("abc@mail.example", "<abc@mail.example>"),  # old mailers leave out the brackets
        (CRLF_WORD, None),
        ("<a=?utf-8?q?=0D=0A?=b@x.example>", None),
        ("<caf\u00e9@client.example>", None),
        ("<a b@x.example>", None),
        ("<a\x0b@x.example>", None),
        ("<no-at-sign>", None),
        ("<a@x.example> <b@x.example>", None),
        ("<a@x.example> junk", None),
        ("<" + "a" * 300 + "@x.example>", None),
        ("", None),
    ],
)
def test_a_message_id_is_one_strict_ascii_token(header: str, expected: str | None) -> None:
    assert msgid.parse_one(header) == expected


def test_reference_lists_keep_only_valid_tokens() -> None:
    header = (
        "<ok-1@c.example> =?utf-8?q?<r@x>=0D=0ABcc:_x@evil.example?= <caf\u00e9@c.example>"
        "<ok-2@c.example><ok-3@c.example>, <ok-1@c.example> (comment) <bad id@c.example>"
    )
    assert msgid.parse_list(header) == ["<ok-1@c.example>", "<ok-2@c.example>", "<ok-3@c.example>"]
    assert msgid.parse_list("<a@x.example>\r\nBcc: x@evil.example") == []
    assert threads.message_ids(CRLF_WORD) == []


# --------------------------------------------------------------------------- drafts


def test_draft_of_a_hostile_message_has_only_the_headers_and_body_meant() -> None:
    raw, body = compose(hostile_request())

    assert header_names(raw) == DRAFT_HEADER_NAMES  # no Bcc, one Content-Type, no In-Reply-To
    assert b"evil.example" not in raw and b"<p>" not in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    for pol in (email.policy.default, email.policy.compat32):
        parsed = email.message_from_bytes(raw, policy=pol)
        assert parsed.get_all("Bcc") is None
        assert parsed.get_content_type() == "text/plain" and not parsed.is_multipart()
        assert len(parsed.get_all("Content-Type") or []) == 1
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    # the subject is the text of one decoding, literal encoded word and all, as text
    assert str(parsed["Subject"]) == "Re: =?utf-8?q?Logo=0D=0ABcc:_sub@evil.example?="
    assert "\r" not in str(parsed["Subject"]) and "\n" not in str(parsed["Subject"])
    assert parsed["In-Reply-To"] is None
    # <r@x> is what mail-parser itself reads out of the encoded word: a valid, harmless id
    assert str(parsed["References"]).split() == [
        "<ok-1@client.example>",
        "<r@x>",
        "<ok-2@client.example>",
    ]
    assert parsed["From"].addresses[0].addr_spec == "alex@work.example"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["client@client.example"]
    assert parsed.get_content().replace("\r\n", "\n").rstrip() == body.rstrip()


def test_draft_threads_under_a_valid_id_and_drops_controls_from_the_subject() -> None:
    raw, _body = compose(
        raw_mail(
            [
                ("From", "=?utf-8?q?Ana_Mar=C3=ADa?= <ana@client.example>"),
                ("To", "alex@work.example"),
                ("Subject", b_word("Logo\x1b[2J\u2028Bcc: x@evil.example\u202e\x00 \u00fcber")),
                ("Message-ID", "<m-2@client.example>"),
                ("In-Reply-To", "<m-1@client.example>"),
                ("References", "<m-0@client.example> <m-1@client.example>"),
            ],
            PAYMENT,
        )
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["In-Reply-To"] == "<m-2@client.example>"
    assert str(parsed["References"]).split() == [
        "<m-0@client.example>",
        "<m-1@client.example>",
        "<m-2@client.example>",
    ]
    assert str(parsed["Subject"]) == "Re: Logo [2J Bcc: x@evil.example \u00fcber"
    assert parsed["To"].addresses[0].display_name == "Ana"
    assert [n.lower() for n in parsed].count("bcc") == 0


def test_draft_from_is_the_configured_address_never_the_incoming_to() -> None:
    request = hostile_request()  # To: attacker@evil.example, chosen by the sender
    raw, _ = compose(request, address="alex@work.example")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"].addresses[0].addr_spec == "alex@work.example"
    assert parsed["Message-ID"].endswith("@work.example>")
    # a login name that is not an address: no From at all (the mail program fills it in)
    raw, _ = compose(request, address="alex")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] is None
    assert parsed["Message-ID"].endswith("@inbox-guard.invalid>")
    assert b"attacker@evil.example" not in raw


def test_no_draft_to_an_address_that_is_not_plain() -> None:
    raw = raw_mail(
        [
            ("From", '"x" <"a\\"b\r\nBcc: c"@client.example>'),
            ("Subject", "Pay"),
            ("Message-ID", "<m@client.example>"),
        ],
        PAYMENT,
    )
    with pytest.raises(ValueError, match="no usable From/Reply-To address"):
        compose(raw)


def test_first_name_never_carries_structure() -> None:
    assert drafts._first_name("=?utf-8?q?x=0D=0ABcc:_a@b?= Smith") == ""
    assert drafts._first_name('Ana" <evil@x> María') == "Ana"
    assert drafts._first_name("José-Luis Pérez") == "José-Luis"


# --------------------------------------------------------------------------- threads


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[st.Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = st.Store(url)
    yield s
    s.close()


def thread_mail(sender: str, msgid_: str, *, to: str = "alex@work.example", **more: str) -> bytes:
    headers = [("From", sender), ("To", to), ("Subject", more.pop("subject", "Logo"))]
    headers.append(("Message-ID", msgid_))
    for name, value in more.items():
        headers.append((name.replace("_", "-"), value))
    return raw_mail(headers)


def record(session: Session, items: list[tuple[bytes, str]], **kw: Any) -> list[str]:
    """Assign threads like the scanner does and record the rows (sender, recipients)."""
    msgs = [(parse_message(raw), h, None) for raw, h in items]
    ids = threads.assign_batch(session, "a", msgs, **kw)
    for (msg, h, _g), thread_id in zip(msgs, ids, strict=True):
        session.add(
            st.StoredMessage(
                account="a",
                folder="INBOX",
                uidvalidity=1,
                uid=int(h.lstrip("h")),
                message_id=msg.message_id or None,
                content_hash=h,
                thread_id=thread_id,
                sender=msg.from_.addr if msg.from_ else "",
                recipients=",".join(a.addr for a in (*msg.to, *msg.cc)),
            )
        )
    session.flush()
    return ids


def test_another_sender_citing_a_clients_id_starts_its_own_thread(store: st.Store) -> None:
    client = thread_mail("ana@client.example", "<c-1@client.example>", Cc="bo@client.example")
    forged = thread_mail("ana@client-pay.example", "<c-1@client.example>")
    citing = thread_mail(
        "ana@client-pay.example",
        "<f-2@client-pay.example>",
        subject="Re: Logo",
        In_Reply_To="<c-1@client.example>",
        References="<c-1@client.example>",
    )
    colleague = thread_mail(
        "bo@client.example", "<b-3@client.example>", In_Reply_To="<c-1@client.example>"
    )
    with store.session() as s:
        (t_client,) = record(s, [(client, "h1")])
    with store.session() as s:
        t_forged, t_citing, t_colleague = record(
            s, [(forged, "h2"), (citing, "h3"), (colleague, "h4")]
        )
    with store.session() as s:
        # the client's id still points at the client's thread, not the forger's
        assert st.ref_map(s, "a", ["id:c-1@client.example"]) == {"id:c-1@client.example": t_client}
        members = {m.content_hash for m in st.thread_messages(s, "a", t_client)}
    assert t_forged != t_client and t_citing != t_client
    assert t_colleague == t_client  # Cc'd on the thread: a participant
    assert members == {"h1", "h4"}


def test_the_owner_and_the_platform_may_join_any_thread(store: st.Store) -> None:
    client = thread_mail("ana@client.example", "<c-1@client.example>", to="alex@work.example")
    from_sent = thread_mail(
        "alex.other@work.example",
        "<o-2@work.example>",
        to="someone@else.example",
        In_Reply_To="<c-1@client.example>",
    )
    platform = thread_mail(
        "notify@platform.example", "<p-3@platform.example>", References="<c-1@client.example>"
    )
    stranger = thread_mail(
        "notify@p1atform.example", "<p-4@p1atform.example>", References="<c-1@client.example>"
    )
    with store.session() as s:
        (t_client,) = record(s, [(client, "h1")])
    with store.session() as s:
        (t_sent,) = record(s, [(from_sent, "h2")], owner_sent=True)
        (t_owner,) = record(
            s,
            [
                (
                    thread_mail(
                        "me@work.example",
                        "<o-5@work.example>",
                        to="x@y.example",
                        In_Reply_To="<c-1@client.example>",
                    ),
                    "h5",
                )
            ],
            owners=["me@work.example"],
        )
        (t_platform,) = record(
            s, [(platform, "h3")], trusted=lambda m: m.message_id == "<p-3@platform.example>"
        )
        (t_stranger,) = record(s, [(stranger, "h4")], trusted=lambda m: False)
    assert t_sent == t_owner == t_platform == t_client
    assert t_stranger != t_client


def test_a_reused_message_id_from_another_sender_is_found(store: st.Store) -> None:
    client = thread_mail("ana@client.example", "<c-1@client.example>")
    with store.session() as s:
        record(s, [(client, "h1")])
    again = parse_message(client)
    forged = parse_message(thread_mail("billing@evil.example", "<c-1@client.example>"))
    fresh = parse_message(thread_mail("bo@client.example", "<c-9@client.example>"))
    twice = parse_message(thread_mail("eve@evil.example", "<c-9@client.example>"))
    with store.session() as s:
        found = threads.reused_message_ids(s, "a", [again, forged, fresh, twice])
    assert found == {
        1: ("<c-1@client.example>", "ana@client.example"),
        3: ("<c-9@client.example>", "bo@client.example"),
    }
    with store.session() as s:  # what the scanner uses: the same answer from assign_batch
        reused: dict[int, tuple[str, str]] = {}
        items = [(m, f"{i:064x}", None) for i, m in enumerate([again, forged, fresh, twice])]
        threads.assign_batch(s, "a", items, reused=reused)
    assert reused == found
    finding = threads.reused_id_finding(*found[1])
    assert finding.rule == "thread.reused-message-id" and finding.category == "phishing"
    assert "ana@client.example" in finding.evidence
