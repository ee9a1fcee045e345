"""The daily digest without a mail server: defanging, escaping, selection periods, empty
digests, retries of pending ones and the daily due time across time zones and DST.

Store contents are real rows in a real SQLite file (guard.store models), not mocks.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from sqlmodel import select
from support.flagged import add_thread

from guard import reports as dg
from guard import store as st
from guard.config import Config
from guard.reports.digest import MAX_MESSAGES, MAX_THREADS, digest_lock
from guard.reports.smtp import Redactor, describe

T0 = datetime(2026, 11, 20, 9, 0)  # naive UTC, as the store keeps times
ACCOUNT = "default"

HOSTILE_SUBJECT = (
    "Invoice <script>document.body.setAttribute('data-pwned','1')</script> "
    "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"> "
    "\u202egpj.exe \x1b[31mRED\x1b[0m https://pay.evil.example/login"
)
HOSTILE_EVIDENCE = (
    'click <a href="javascript:alert(1)">here</a> or https://paypal.com@evil.example/x '
    "or JavaScript:alert(2) \u2066hidden\u2069 \x1b]8;;http://evil.example\x07link"
)


# --------------------------------------------------------------------------- helpers


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(
    store: st.Store,
    *,
    timezone: str = "Europe/Berlin",
    time: str = "08:00",
    send_empty: bool = False,
    min_risk: str = "medium",
    smtp_port: int | None = None,
) -> Config:
    return Config.model_validate(
        {
            "imap": {"host": "127.0.0.1", "tls": "none", "username": "me"},
            "smtp": {
                "host": "127.0.0.1",
                "tls": "none",
                "port": smtp_port or closed_port(),
                "timeout": 5.0,
            },
            "digest": {
                "to": "Me <me@home.example>",
                "from": "inbox-guard <guard@work.example>",
                "time": time,
                "timezone": timezone,
                "send_empty": send_empty,
            },
            "policy": {"min_risk": min_risk},
            "store": {"url": store.url},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[st.Store]:
    s = st.Store(f"sqlite:///{tmp_path / 'guard.sqlite3'}")
    yield s
    s.close()


@pytest.fixture
def config(store: st.Store) -> Config:
    return make_config(store)


def add_phishing_thread(
    store: st.Store, thread_id: str, subject: str, sender: tuple[str, str], evidence: str
) -> None:
    """A thread of one phishing message from ``sender`` (name, address) with one finding,
    updated at T0."""
    sender_name, address = sender
    add_thread(
        store,
        thread_id,
        updated_at=T0,
        subject=subject,
        messages=[
            {
                "sender": address,
                "sender_name": sender_name,
                "subject": subject,
                "findings": [("phish.link", "phishing", evidence)],
            }
        ],
        categories=("phishing",),
    )


def add_scan(
    store: st.Store, started: datetime, *, minutes: float = 1, new: int = 10, finished: bool = True
) -> None:
    with store.session() as session:
        session.add(
            st.ScanRun(
                account=ACCOUNT,
                started_at=started,
                finished_at=started + timedelta(minutes=minutes) if finished else None,
                new_messages=new,
            )
        )


def digests(store: st.Store) -> list[st.Digest]:
    with store.session() as session:
        return list(session.exec(select(st.Digest).order_by(st.Digest.id)).all())  # type: ignore[arg-type]


class TagCollector(HTMLParser):
    """Every start tag with its attributes, to assert what the HTML part may contain."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


ALLOWED_TAGS = {
    "html", "head", "meta", "title", "body", "div", "h1", "h2", "h3", "p", "span",
    "strong", "ul", "li",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"style", "lang", "charset", "name", "content"}


def assert_inert_html(html: str) -> None:
    parser = TagCollector()
    parser.feed(html)
    parser.close()
    tags = {tag for tag, _ in parser.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for tag, attrs in parser.tags:
        for name, value in attrs:
            assert name in ALLOWED_ATTRIBUTES, (tag, name)
            assert "url(" not in (value or ""), (tag, value)  # no remote CSS images
            assert "javascript" not in (value or "").lower()


# --------------------------------------------------------------------------- defanging


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://example.com/path", "hxxps://example[.]com/path"),
        (
            "see http://a.b.example:8080/x?u=evil.example#f",
            "see hxxp://a[.]b[.]example:8080/x?u=evil[.]example#f",
        ),
        ("HTTPS://Example.COM", "hxxps://Example[.]COM"),
        ("ftp://files.example.org/a", "fxp://files[.]example[.]org/a"),
        ("https://paypal.com@evil.example/", "hxxps://paypal[.]com@evil[.]example/"),
        ("visit www.evil.example now", "visit www[.]evil[.]example now"),
        ("wa.me/15551234 or t.me/bob", "wa[.]me/15551234 or t[.]me/bob"),
        ("bob@evil.example", "bob@evil[.]example"),
        ("Write to john.doe@mail.evil.example.", "Write to john.doe@mail[.]evil[.]example."),
        ("xn--80ak6aa92e.com", "xn--80ak6aa92e[.]com"),
        ("login.xn--p1ai/secure", "login[.]xn--p1ai/secure"),
        (
            "пример.рф and münchen.de",
            "пример[.]рф (xn--e1afmkfd[.]xn--p1ai) and münchen[.]de (xn--mnchen-3ya[.]de)",
        ),
        ("evil\u3002com and evil\uff0ecom", "evil[.]com and evil[.]com"),
        ("http://192.168.10.1/admin", "hxxp://192[.]168[.]10[.]1/admin"),
        ("ping 10.0.0.1", "ping 10[.]0[.]0[.]1"),
        ("javascript:alert(1)", "javascript[:]alert(1)"),
        ("JavaScript:void(0)", "JavaScript[:]void(0)"),
        ("data:text/html,<b>x</b>", "data[:]text/html,<b>x</b>"),
        ("skype://live:bob", "skype[:]//live:bob"),
    ],
)
def test_defang_breaks_links_domains_and_addresses(raw: str, expected: str) -> None:
    assert dg.defang(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "hxxps://example[.]com/path",
        "hxxp://evil[.]example:8080/login?u=x[.]com",
        "bob@evil[.]example",
        "www[.]evil[.]example",
        "javascript[:]alert(1)",
        "skype[:]//live:bob",
        "the fee is $1,800.00, e.g. for v2.0 of the logo. Thanks!",
        "the data: 5 rows",
    ],
)
def test_defang_leaves_defanged_and_ordinary_text_unchanged(text: str) -> None:
    assert dg.defang(text) == text


@settings(max_examples=400, deadline=None)
@given(hs.text(alphabet="ab.:/@-[]xnhtpsf1。 ", max_size=40))
def test_defang_is_idempotent(text: str) -> None:
    once = dg.defang(text)
    assert dg.defang(once) == once
    assert re.search(r"(?i)(?:https?|ftps?)://", once) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("_evil.com", "_evil[.]com"),
        ("-evil.com", "-evil[.]com"),
        ("evil.com_", "evil[.]com_"),
        ("evil.com-", "evil[.]com-"),
        ("see __evil.example__ now", "see __evil[.]example__ now"),
        ("go to -login-.evil.example-", "go to -login-[.]evil[.]example-"),
        ("bob@_evil.com", "bob@_evil[.]com"),
        ("hxxp://x/?u=_evil.com_", "hxxp://x/?u=_evil[.]com_"),
        ("x.1.2.3.4_", "x.1[.]2[.]3[.]4_"),
        ("“evil.com”", "“evil[.]com”"),
        # an e-mail address's local part is not a host, even with "-" or "_" in it
        ("john.doe-x@mail.evil.example", "john.doe-x@mail[.]evil[.]example"),
        ("john.doe_@evil.example", "john.doe_@evil[.]example"),
    ],
)
def test_defang_hosts_with_leading_or_trailing_underscore_or_hyphen(
    raw: str, expected: str
) -> None:
    assert dg.defang(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pаypal.com", "pаypal[.]com (xn--pypal-4ve[.]com)"),  # Cyrillic а
        ("mail bob@pаypal.com now", "mail bob@pаypal[.]com (xn--pypal-4ve[.]com) now"),
        ("https://pаypal.com/login", "hxxps://pаypal[.]com (xn--pypal-4ve[.]com)/login"),
        ("ｐａｙｐａｌ.com", "ｐａｙｐａｌ[.]com (paypal[.]com)"),  # full-width letters
        ("💩.la", "💩[.]la (xn--ls8h[.]la)"),  # IDNA 2003 only
        ("é-.com", "é-[.]com (xn----9fa[.]com)"),  # invalid IDNA 2008: raw punycode
        ("\u0301a.com", "\u0301a[.]com (xn--a-wbb[.]com)"),  # leading combining mark
        ("भारत.com", "भारत[.]com (xn--h2brj9c[.]com)"),  # vowel signs stay in the label
        ("plain.example", "plain[.]example"),
    ],
)
def test_defang_shows_non_ascii_hosts_with_their_punycode(raw: str, expected: str) -> None:
    assert dg.defang(raw) == expected
    assert dg.defang(expected) == expected


@pytest.mark.parametrize(
    "label",
    ["x" * 70 + "é", "é" * 300, "☕-", "ß" * 64, "\u0345é", "a_é", "-é-"],
)
def test_punycode_never_fails_on_labels_idna_refuses(label: str) -> None:
    out = dg.defang(f"{label}.example")
    assert out.startswith(f"{label}[.]example (")
    assert out.endswith("[.]example)")
    assert out.split(" (", 1)[1].isascii()


@settings(max_examples=300, deadline=None)
@given(hs.text(alphabet="aé_-.。@ xnа💩\u0301[]()", max_size=40))
def test_defang_with_unicode_is_idempotent_and_annotations_are_ascii(text: str) -> None:
    once = dg.defang(text)
    assert dg.defang(once) == once
    for host in re.findall(r"\(([^()]*)\)", once):
        if host not in text:
            assert host.isascii()


@pytest.mark.parametrize(
    "hidden",
    [
        "\U0001bca0", "\U0001bca1", "\U0001bca2", "\U0001bca3",  # shorthand format controls
        *(chr(c) for c in range(0x1D173, 0x1D17B)),  # musical symbol format characters
        "\u00ad", "\u034f", "\u061c", "\u115f", "\u1160", "\u17b4", "\u180e", "\u200b",
        "\u2065", "\u3164", "\ufe0f", "\ufeff", "\uffa0", "\ufff0", "\U000e0001",
        "\U000e0041", "\U000e0100", "\U000e0fff", "\u0600", "\U000110bd", "\U00013430",
    ],
)  # fmt: skip
def test_safe_text_strips_every_default_ignorable_code_point(hidden: str) -> None:
    assert dg.safe_text(f"pay{hidden}pal{hidden}.com") == "paypal[.]com"


def test_safe_text_strips_all_default_ignorables_of_the_unicode_tables() -> None:
    # Default_Ignorable_Code_Point is Other_Default_Ignorable + Cf + variation selectors
    # (less white space and a few visible marks): every Cf the running Python knows is gone.
    import sys
    import unicodedata

    cf = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    assert len(cf) > 150
    assert dg.safe_text("a" + "".join(cf) + "b") == "ab"


def test_safe_text_strips_escapes_bidi_and_invisible_characters() -> None:
    text = dg.safe_text("\x1b[31mred\x1b[0m\u202e gpj.exe\u200b evil\u200b.com\r\nnext\x00\x07")
    assert text == "red gpj[.]exe evil[.]com next"
    assert dg.safe_text("x" * 500, 20) == "x" * 19 + "…"
    assert dg.safe_text(None) == ""


# --------------------------------------------------------------------------- rendering


def test_hostile_subjects_senders_and_evidence_are_inert_in_both_parts(
    store: st.Store, config: Config
) -> None:
    sender = ("PayPal.com <b>Support</b>\u202e", "support@paypal.com.evil.example")
    add_phishing_thread(store, "t-hostile", HOSTILE_SUBJECT, sender, HOSTILE_EVIDENCE)
    rendered = dg.preview(store, config, now=T0 + timedelta(hours=1))

    for part in (rendered.text, rendered.html):
        for bad in ("https://", "http://", "javascript:", "JavaScript:", "paypal.com", ".example"):
            assert bad not in part
        for char in ("\x1b", "\u202e", "\u2066", "\u2069", "\x07"):
            assert char not in part
        assert "hxxps://pay[.]evil[.]example/login" in part
        assert "support@paypal[.]com[.]evil[.]example" in part
        assert "gpj[.]exe" in part  # the override removed: the name reads as it really is

    html = rendered.html
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "&lt;script&gt;document[.]body" in html
    assert "&lt;img src=x onerror=&#34;" in html
    assert "data-pwned" in html  # as escaped text only
    assert_inert_html(html)
    # the text part is not HTML: shown as written, never escaped into &lt; noise
    assert "<script>document[.]body" in rendered.text
    assert "&lt;" not in rendered.text


def test_digest_defangs_edge_hosts_strips_ignorables_and_shows_punycode(
    store: st.Store, config: Config
) -> None:
    subject = "Payout on _evil.com, -evil.com and evil.com_ today"
    evidence = "log in at p\U0001bca0аypal.com or pay\U0001d173pal\U0001d17a.com"
    add_phishing_thread(
        store, "t-edges", subject, ("Billing\U0001bca3 team", "billing@-evil.com"), evidence
    )
    rendered = dg.preview(store, config, now=T0 + timedelta(hours=1))
    for part in (rendered.text, rendered.html):
        assert "_evil[.]com, -evil[.]com and evil[.]com_ today" in part
        assert "billing@-evil[.]com" in part
        assert "evil.com" not in part
        assert "pаypal[.]com (xn--pypal-4ve[.]com)" in part
        assert "paypal[.]com" in part  # the invisible musical symbols are gone
        assert "Billing team" in part
        for char in ("\U0001bca0", "\U0001bca3", "\U0001d173", "\U0001d17a"):
            assert char not in part


def test_digest_lists_messages_evidence_explanations_advice_and_reply(
    store: st.Store, config: Config
) -> None:
    add_scan(store, T0 - timedelta(hours=2), new=37)
    add_scan(store, T0 - timedelta(hours=1), new=5)
    repeated = ("payment.pay-directly", "off_platform_payment", "pay you directly via PayPal")
    add_thread(
        store,
        "t-pay",
        updated_at=T0,
        subject="Logo design",
        categories=("off_platform_payment", "off_platform_contact"),
        messages=[
            {
                "findings": [
                    repeated,
                    ("contact.messenger", "off_platform_contact", "add me on WhatsApp"),
                ]
            },
            {"direction": "out", "folder": "Sent", "sender": "me@work.example", "findings": []},
            {"findings": [repeated, repeated]},  # quoted again in a reply: shown once
        ],
    )
    add_thread(
        store,
        "t-dispute",
        updated_at=T0 - timedelta(minutes=5),
        risk="medium",
        subject="Refund now",
        categories=("dispute",),
        messages=[{"findings": [("dispute.chargeback", "dispute", "I will file a chargeback")]}],
    )
    add_thread(store, "t-low", updated_at=T0, risk="low", subject="Below the minimum")

    rendered = dg.preview(store, config, now=T0 + timedelta(minutes=1))
    content = rendered.content
    assert rendered.subject == "inbox-guard: 2 risky threads (1 high) — 2026-11-20"
    assert [t.subject for t in content.threads] == ["Logo design", "Refund now"]
    assert (content.scanned, content.scans) == (42, 2)
    assert content.by_category == (
        ("off_platform_payment", "Off-platform payment", 1),
        ("off_platform_contact", "Off-platform contact", 1),
        ("dispute", "Dispute", 1),
    )
    pay = content.threads[0]
    assert [m.direction for m in pay.messages] == ["in", "out", "in"]
    assert pay.messages[0].evidence == ("pay you directly via PayPal", "add me on WhatsApp")
    assert pay.messages[2].evidence == ()
    assert [x.rule for x in pay.explanations] == ["payment.pay-directly", "contact.messenger"]
    assert pay.explanations[0].text.endswith(":\x20keep it on the platform.")
    assert pay.suggested_reply == dg.SUGGESTED_REPLIES["off_platform_payment"]
    assert content.threads[1].suggested_reply is None
    assert content.threads[1].advice[0].steps == dg.ADVICE["dispute"]

    for part in (rendered.text, rendered.html):
        flat = " ".join(part.replace("| ", "").split())
        assert "Logo design" in flat and "Refund now" in flat
        assert "Below the minimum" not in flat
        assert "Scanned 42 new messages in 2 scans" in flat.replace("<strong>", "").replace(
            "</strong>", ""
        )
        assert "escrow" in flat and "dispute or resolution process" in flat
        assert "pay you directly via PayPal" in flat
        assert "please send the offer through the platform" in flat  # the suggested reply
    assert "sent by you" in rendered.text
    # times are shown in the digest's zone (Berlin is UTC+1 in November)
    assert "2026-11-20 09:50" in rendered.text  # the last message, 08:50 UTC


def test_long_threads_and_many_threads_are_capped(store: st.Store, config: Config) -> None:
    add_thread(
        store,
        "t-long",
        updated_at=T0,
        messages=[{"subject": f"message {i}", "findings": []} for i in range(MAX_MESSAGES + 4)],
    )
    for i in range(MAX_THREADS + 2):
        add_thread(store, f"t-{i}", updated_at=T0 - timedelta(minutes=1), risk="medium")
    rendered = dg.preview(store, config, now=T0 + timedelta(minutes=1))
    assert rendered.threads == MAX_THREADS + 3
    assert len(rendered.content.threads) == MAX_THREADS
    long = rendered.content.threads[0]
    assert long.hidden_messages == 4
    assert long.messages[-1].subject == f"message {MAX_MESSAGES + 3}"
    assert "3 more flagged threads not shown" in rendered.text
    assert "4 earlier not shown" in rendered.text


def test_no_scan_in_the_period_is_pointed_out(store: st.Store, config: Config) -> None:
    rendered = dg.preview(store, config, now=T0)
    assert rendered.subject == "inbox-guard: nothing risky — 2026-11-20"
    assert "no scan finished in this period" in rendered.text.lower()
    assert "no scan finished in this period" in rendered.html.lower()


# --------------------------------------------------------------------------- selection periods


def test_second_digest_covers_only_what_came_after_the_first(
    store: st.Store, config: Config
) -> None:
    add_thread(store, "t-first", updated_at=T0, subject="First thread")
    first = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    assert first is not None
    assert first.period_start is None and first.period_end == T0 + timedelta(hours=1)
    assert first.threads == 1 and first.status == "pending"
    assert "First thread" in first.text_body

    add_thread(store, "t-second", updated_at=T0 + timedelta(hours=2), subject="Second thread")
    second = dg.build_digest(store, config, now=T0 + timedelta(hours=3))
    assert second is not None
    assert second.period_start == first.period_end  # the pending first one is not re-covered
    assert second.threads == 1
    assert "Second thread" in second.text_body and "First thread" not in second.text_body
    assert second.message_id != first.message_id

    # a thread that grows after a digest comes back in the next one, its new message marked
    with store.session() as session:
        thread = session.get(st.Thread, (ACCOUNT, "t-first"))
        assert thread is not None
        thread.updated_at = T0 + timedelta(hours=4)
        session.add(thread)
    third = dg.build_digest(store, config, now=T0 + timedelta(hours=5))
    assert third is not None and third.threads == 1 and "First thread" in third.text_body


def test_preview_writes_nothing_and_since_overrides_the_start(
    store: st.Store, config: Config
) -> None:
    add_thread(store, "t-old", updated_at=T0 - timedelta(days=3), subject="Old thread")
    add_thread(store, "t-new", updated_at=T0, subject="New thread")
    dg.build_digest(store, config, now=T0 - timedelta(days=1))
    default = dg.preview(store, config, now=T0 + timedelta(hours=1))
    assert [t.subject for t in default.content.threads] == ["New thread"]
    since = datetime(2026, 11, 10, tzinfo=ZoneInfo("Europe/Berlin"))
    wider = dg.preview(store, config, since=since, now=T0 + timedelta(hours=1))
    assert {t.subject for t in wider.content.threads} == {"Old thread", "New thread"}
    assert wider.content.period_start == datetime(2026, 11, 9, 23, 0)
    assert len(digests(store)) == 1


def test_a_running_scan_ends_the_period_at_its_start(store: st.Store, config: Config) -> None:
    # The scan started at T0 and has not finished: what it stamps may not be committed
    # yet, so the digest stops just before T0 and the next one picks it up.
    add_thread(store, "t-before", updated_at=T0 - timedelta(minutes=30), subject="Before")
    add_scan(store, T0, finished=False)
    add_thread(store, "t-during", updated_at=T0 + timedelta(minutes=2), subject="During")
    first = dg.build_digest(store, config, now=T0 + timedelta(minutes=5))
    assert first is not None and first.period_end < T0
    assert "Before" in first.text_body and "During" not in first.text_body

    with store.session() as session:
        run = session.exec(select(st.ScanRun)).one()
        run.finished_at = T0 + timedelta(minutes=6)
        session.add(run)
    second = dg.build_digest(store, config, now=T0 + timedelta(minutes=10))
    assert second is not None and "During" in second.text_body

    # a run left unfinished by a crash long ago does not hold the period back
    add_scan(store, T0 - timedelta(days=2), finished=False)
    third = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    assert third is not None and third.period_end == T0 + timedelta(hours=1)


def test_threads_of_other_accounts_are_not_included(store: st.Store, config: Config) -> None:
    add_thread(store, "t-mine", updated_at=T0, subject="Mine")
    add_thread(store, "t-theirs", updated_at=T0, subject="Theirs", account="other")
    row = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    assert row is not None and "Mine" in row.text_body and "Theirs" not in row.text_body
    other = dg.build_digest(store, config, account="other", now=T0 + timedelta(hours=1))
    assert other is not None and other.period_start is None and "Theirs" in other.text_body


# --------------------------------------------------------------------------- empty digests


def test_empty_digest_is_recorded_but_never_sent_when_send_empty_is_off(
    store: st.Store, config: Config
) -> None:
    row = dg.build_digest(store, config, now=T0)
    assert row is not None
    assert row.status == "empty" and row.threads == 0
    assert row.subject == "inbox-guard: nothing risky — 2026-11-20"
    # nothing pending: no connection is even tried (the configured port is closed)
    assert dg.send_pending(store, config) == []
    assert [d.status for d in digests(store)] == ["empty"]
    # the empty one still moves the period on
    nxt = dg.build_digest(store, config, now=T0 + timedelta(days=1))
    assert nxt is not None and nxt.period_start == T0


def test_empty_digest_is_sent_when_send_empty_is_on(store: st.Store) -> None:
    config = make_config(store, send_empty=True)
    row = dg.build_digest(store, config, now=T0)
    assert row is not None and row.status == "pending" and row.threads == 0
    assert "Nothing risky was found" in row.text_body
    assert "Nothing risky was found" in row.html_body


def test_build_without_digest_settings_is_an_error(store: st.Store, config: Config) -> None:
    bare = config.model_copy(update={"digest": None, "smtp": None})
    with pytest.raises(dg.DigestError, match=r"\[digest\]"):
        dg.build_digest(store, bare, now=T0)
    assert dg.due(store, bare, now=T0) is False
    assert dg.preview(store, bare, now=T0).threads == 0  # preview works without [digest]


# --------------------------------------------------------------------------- pending and retry


def test_failed_send_keeps_digests_pending_and_retries_oldest_first(
    store: st.Store, config: Config
) -> None:
    add_thread(store, "t1", updated_at=T0)
    first = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    add_thread(store, "t2", updated_at=T0 + timedelta(hours=2))
    second = dg.build_digest(store, config, now=T0 + timedelta(hours=3))
    assert first is not None and second is not None

    results = dg.send_pending(store, config)  # the SMTP port is closed
    assert [r.digest_id for r in results] == [first.id, second.id]
    assert all(not r.sent and r.attempts == 1 for r in results)
    assert "cannot reach 127.0.0.1:" in (results[0].error or "")
    assert "refused" in (results[0].error or "").lower()
    line = dg.summarize(results)
    assert "\n" not in line and line.startswith("2 digests not sent (will retry)")

    again = dg.send_pending(store, config)
    assert [r.attempts for r in again] == [2, 2]
    rows = digests(store)
    assert [(d.status, d.attempts) for d in rows] == [("pending", 2), ("pending", 2)]
    assert rows[0].last_error is not None and "\n" not in rows[0].last_error
    assert str(again[0]).startswith(f"digest {first.id} not sent (attempt 2, will retry): ")


def test_one_digest_run_at_a_time(store: st.Store, config: Config) -> None:
    with digest_lock(store, ACCOUNT), pytest.raises(dg.DigestError, match="another digest"):
        dg.build_digest(store, config, now=T0)
    assert dg.build_digest(store, config, now=T0) is not None  # released again


def test_message_is_multipart_alternative_with_stable_headers(
    store: st.Store, config: Config
) -> None:
    add_thread(store, "t1", updated_at=T0, subject="Budget – über €500")
    row = dg.build_digest(store, config, now=T0 + timedelta(hours=1))
    assert row is not None and config.digest is not None
    msg = dg.compose_message(row, config.digest)
    again = dg.compose_message(row, config.digest)
    assert msg["Message-ID"] == again["Message-ID"] == row.message_id
    assert row.message_id.endswith("@work.example>")
    assert msg["Date"] == again["Date"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["From"] == "inbox-guard <guard@work.example>"
    assert msg["To"] == "Me <me@home.example>"
    assert msg.get_content_type() == "multipart/alternative"
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content_charset() == html.get_content_charset() == "utf-8"
    assert "Budget – über €500" in text.get_content()
    assert "Budget – über €500" in html.get_content()


# --------------------------------------------------------------------------- error lines


def test_auth_errors_never_repeat_the_server_reply(store: st.Store, config: Config) -> None:
    assert config.smtp is not None
    smtp = config.smtp.model_copy(update={"username": "me@work.example"})
    redact = Redactor()
    redact.add("hunter2-password", "\0me@work.example\0hunter2-password")
    echo = b"5.7.8 bad credentials AHVzZXIAaHVudGVyMi1wYXNzd29yZA== hunter2-password"
    line = describe(smtplib.SMTPAuthenticationError(535, echo), smtp, redact, "logging in")
    assert line.startswith("SMTP login as me@work.example refused by 127.0.0.1:")
    assert "(535 5.7.8)" in line
    assert "hunter2" not in line and "AHVz" not in line

    data_error = smtplib.SMTPDataError(554, b"5.6.0 rejected: hunter2-password\r\nline two")
    line = describe(data_error, smtp, redact, "sending the digest")
    assert "hunter2" not in line and "\n" not in line and "554" in line


# --------------------------------------------------------------------------- due


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute)  # naive UTC, like the store


@pytest.mark.parametrize(
    ("timezone", "time", "now", "expected"),
    [
        # Berlin in winter is UTC+1: 08:00 local is 07:00 UTC
        ("Europe/Berlin", "08:00", utc(2026, 11, 21, 6, 59), False),
        ("Europe/Berlin", "08:00", utc(2026, 11, 21, 7, 0), True),
        # ... and UTC+2 in summer: 08:00 local is 06:00 UTC
        ("Europe/Berlin", "08:00", utc(2026, 7, 1, 5, 59), False),
        ("Europe/Berlin", "08:00", utc(2026, 7, 1, 6, 1), True),
        # Sao Paulo is UTC-3 all year: 08:00 local is 11:00 UTC
        ("America/Sao_Paulo", "08:00", utc(2026, 11, 21, 10, 59), False),
        ("America/Sao_Paulo", "08:00", utc(2026, 11, 21, 11, 0), True),
        # 23:00 in Sao Paulo is 02:00 UTC the next day; at 01:00 UTC it is 22:00 local
        ("America/Sao_Paulo", "23:00", utc(2026, 11, 21, 1, 0), False),
        ("America/Sao_Paulo", "23:00", utc(2026, 11, 21, 2, 30), True),
        # 02:30 does not exist in Berlin on 2026-03-29 (02:00 -> 03:00): due after the gap
        ("Europe/Berlin", "02:30", utc(2026, 3, 29, 1, 29), False),
        ("Europe/Berlin", "02:30", utc(2026, 3, 29, 1, 30), True),
    ],
)
def test_due_at_the_local_digest_time(
    store: st.Store, timezone: str, time: str, now: datetime, expected: bool
) -> None:
    config = make_config(store, timezone=timezone, time=time)
    assert dg.due(store, config, now=now) is expected


def test_due_once_per_day_however_many_days_were_missed(store: st.Store) -> None:
    config = make_config(store, timezone="America/Sao_Paulo", time="08:00")
    # the last digest was three days ago; the daemon comes back at 09:30 local (12:30 UTC)
    dg.build_digest(store, config, now=utc(2026, 11, 18, 11, 0))
    now = utc(2026, 11, 21, 12, 30)
    assert dg.due(store, config, now=now)
    row = dg.build_digest(store, config, now=now)
    assert row is not None and row.period_start == utc(2026, 11, 18, 11, 0)  # one digest
    assert not dg.due(store, config, now=now + timedelta(minutes=1))
    assert not dg.due(store, config, now=utc(2026, 11, 22, 10, 59))  # 07:59 next day
    assert dg.due(store, config, now=utc(2026, 11, 22, 11, 0))


def test_digest_built_before_todays_time_does_not_count_for_it(store: st.Store) -> None:
    config = make_config(store, timezone="America/Sao_Paulo", time="23:00")
    # built at 20:30 local on the 20th (23:30 UTC): today's 23:00 slot is still ahead
    dg.build_digest(store, config, now=utc(2026, 11, 20, 23, 30))
    assert not dg.due(store, config, now=utc(2026, 11, 21, 1, 0))  # 22:00 local
    assert dg.due(store, config, now=utc(2026, 11, 21, 2, 30))  # 23:30 local


def test_repeated_hour_when_dst_ends_is_due_once(store: st.Store) -> None:
    # Berlin, 2026-10-25: 02:30 happens twice (CEST at 00:30 UTC, CET at 01:30 UTC)
    config = make_config(store, timezone="Europe/Berlin", time="02:30")
    assert config.digest is not None
    assert dg.digest_slot(config.digest, utc(2026, 10, 25, 12, 0)) == utc(2026, 10, 25, 0, 30)
    assert not dg.due(store, config, now=utc(2026, 10, 25, 0, 29))
    assert dg.due(store, config, now=utc(2026, 10, 25, 0, 31))
    dg.build_digest(store, config, now=utc(2026, 10, 25, 0, 31))
    assert not dg.due(store, config, now=utc(2026, 10, 25, 1, 31))  # the second 02:30


def test_due_accepts_aware_times(store: st.Store) -> None:
    config = make_config(store, timezone="Europe/Berlin", time="08:00")
    berlin = ZoneInfo("Europe/Berlin")
    assert not dg.due(store, config, now=datetime(2026, 11, 21, 7, 59, tzinfo=berlin))
    assert dg.due(store, config, now=datetime(2026, 11, 21, 8, 0, tzinfo=berlin))
    assert dg.due(store, config, now=datetime(2026, 11, 21, 7, 0, tzinfo=UTC))
