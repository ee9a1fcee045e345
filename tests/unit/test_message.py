"""guard.mail.parse_message: raw bytes to Message, never raising.

Every fixture is built here, as bytes literals or with the stdlib ``email`` package.
"""

from __future__ import annotations

import io
import os
import random
import zipfile
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.mail import (
    ATTACHMENT_TEXT_CHARS,
    MAX_ATTACHMENTS,
    MAX_HEADER_BYTES,
    MAX_HTML_DEPTH,
    MAX_LINKS,
    MAX_MIME_DEPTH,
    MAX_PARTS,
    MAX_TEXT_CHARS,
    Address,
    Link,
    Message,
    parse_message,
)

# --------------------------------------------------------------------------------------
# Builders


def raw_mail(headers: str, body: bytes | str = b"", *, crlf: bool = False) -> bytes:
    """Header block (one header per line, LF) and body joined as a message."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    data = headers.strip("\n").encode("utf-8") + b"\n\n" + body
    return data.replace(b"\n", b"\r\n") if crlf else data


def build(
    *,
    text: str | None = "Hello",
    html: str | None = None,
    subject: str = "Test",
    sender: str = "Dana Client <dana@client.example>",
    extra: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Sam Novak <sam@example.org>"
    msg["Subject"] = subject
    for name, value in (extra or {}).items():
        msg[name] = value
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    return msg


def zip_bytes(*, encrypted: bool) -> bytes:
    """A real zip archive; ``encrypted`` sets general-purpose flag bit 0 in its headers."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("invoice.txt", "please pay " * 20)
        archive.writestr("readme.txt", "hello")
    data = bytearray(buf.getvalue())
    if encrypted:
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            pos = data.find(signature)
            while pos != -1:
                data[pos + offset] |= 0x01
                pos = data.find(signature, pos + 4)
    return bytes(data)


def with_attachments(*files: tuple[bytes, str, str, str]) -> bytes:
    """A short text message with (data, maintype, subtype, filename) attachments."""
    msg = build(text="Please see the attached files.")
    for data, maintype, subtype, filename in files:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg)


# --------------------------------------------------------------------------------------
# Plain messages, line endings, headers


PLAIN = """\
Return-Path: <Bounce+123@Mail.Client.example>
From: "Dana Client" <Dana@Client.EXAMPLE>
Sender: Mailer Robot <robot@mailer.example>
Reply-To: Billing <billing@other.example>, second@other.example
To: Sam Novak <sam@example.org>, "Lee, Park" <lee@agency.example>
Cc: boss@client.example
Subject: Re:   dashboard
   milestone 2
Date: Tue, 24 Sep 2024 11:15:27 -0500
Message-ID: <CAM9r2Fq@mail.client.example>
In-Reply-To: <f3c2a8e1@example.org>
References: <a1@example.org>
 <f3c2a8e1@example.org>
List-Id: Client news <news.client.example>
List-Unsubscribe: <mailto:leave@client.example>,
 <https://client.example/unsubscribe>
Precedence: Bulk
Auto-Submitted: No
Content-Type: text/plain; charset="utf-8"

Hi Sam,

the plan looks good. Details: https://client.example/spec?id=7.
"""


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_plain_message_headers_and_body(crlf: bool) -> None:
    head, _, body = PLAIN.partition("\n\n")
    msg = parse_message(raw_mail(head, body, crlf=crlf))

    assert msg.from_ == Address("Dana Client", "dana@client.example")
    assert msg.from_.domain == "client.example"
    assert msg.sender == Address("Mailer Robot", "robot@mailer.example")
    assert msg.reply_to == (
        Address("Billing", "billing@other.example"),
        Address("", "second@other.example"),
    )
    assert msg.to == (
        Address("Sam Novak", "sam@example.org"),
        Address("Lee, Park", "lee@agency.example"),
    )
    assert msg.cc == (Address("", "boss@client.example"),)
    assert msg.return_path == "bounce+123@mail.client.example"
    assert msg.subject == "Re: dashboard milestone 2"
    assert msg.date == datetime(2024, 9, 24, 16, 15, 27, tzinfo=UTC)
    assert msg.date.utcoffset() == timedelta(hours=-5)  # the sender's own offset is kept
    assert msg.message_id == "<CAM9r2Fq@mail.client.example>"
    assert msg.in_reply_to == "<f3c2a8e1@example.org>"
    assert msg.references == ("<a1@example.org>", "<f3c2a8e1@example.org>")
    assert msg.list_id == "Client news <news.client.example>"
    assert msg.list_unsubscribe == (
        "<mailto:leave@client.example>, <https://client.example/unsubscribe>"
    )
    assert msg.precedence == "bulk"
    assert msg.auto_submitted == "no"
    assert msg.is_bulk
    assert msg.text == (
        "Hi Sam,\n\nthe plan looks good. Details: https://client.example/spec?id=7.\n"
    )
    assert "\r" not in msg.text
    assert msg.html_text == ""
    assert msg.links == (
        Link("https://client.example/spec?id=7", "https://client.example/spec?id=7"),
    )
    assert msg.attachments == ()
    assert msg.size == len(raw_mail(head, body, crlf=crlf))
    assert msg.body == msg.text


def test_lf_and_crlf_give_the_same_message() -> None:
    head, _, body = PLAIN.partition("\n\n")
    lf = parse_message(raw_mail(head, body))
    crlf = parse_message(raw_mail(head, body, crlf=True))
    assert lf.text == crlf.text
    assert lf.subject == crlf.subject
    assert lf.list_unsubscribe == crlf.list_unsubscribe


def test_missing_headers_are_empty() -> None:
    msg = parse_message(b"Subject: hi\n\nbody\n")
    assert msg.from_ is None
    assert msg.sender is None
    assert msg.reply_to == msg.to == msg.cc == ()
    assert msg.return_path == msg.message_id == msg.in_reply_to == ""
    assert msg.references == ()
    assert msg.date is None
    assert msg.list_id == msg.precedence == msg.auto_submitted == msg.list_unsubscribe == ""
    assert not msg.is_bulk
    assert msg.text == "body\n"


def test_null_return_path_is_empty() -> None:
    assert parse_message(b"Return-Path: <>\n\nx").return_path == ""


# --------------------------------------------------------------------------------------
# RFC 2047 headers, charsets


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ("=?UTF-8?B?w5xiZXJ3ZWlzdW5nIGVyaGFsdGVu?=", "Überweisung erhalten"),
        ("=?utf-8?Q?Pago_recibido_=E2=9C=85?=", "Pago recibido ✅"),
        ("=?ISO-8859-1?Q?Caf=E9_cr=E8me?=", "Café crème"),
        ("=?koi8-r?B?8NLJ18XUINPP08XE?=", "Привет сосед"),
        # a multi-byte character split across two encoded words
        ("=?utf-8?B?w5w=?= =?utf-8?B?YmVy?=", "Über"),
        ("Invoice =?utf-8?q?n=C2=BA?= 42  from\n  ACME", "Invoice nº 42 from ACME"),
    ],
)
def test_encoded_subject(encoded: str, expected: str) -> None:
    assert parse_message(raw_mail(f"Subject: {encoded}", "x")).subject == expected


def test_encoded_subject_with_unknown_charset_is_read_with_replacement() -> None:
    msg = parse_message(raw_mail("Subject: =?x-martian?Q?caf=C3=A9_and_=FF?=", "x"))
    assert msg.subject == "café and \ufffd"


def test_encoded_display_names() -> None:
    msg = parse_message(
        raw_mail(
            "From: =?utf-8?q?Jos=C3=A9_P=C3=A9rez?= <jose@example.com>\n"
            "Sender: =?iso-8859-1?q?Ana_G=F3mez?= <ana@example.com>",
            "x",
        )
    )
    assert msg.from_ == Address("José Pérez", "jose@example.com")
    assert msg.sender == Address("Ana Gómez", "ana@example.com")


def test_raw_8bit_header_bytes() -> None:
    raw = (
        b"From: Jos\xe9 <Jose@Example.com>\n"
        b"To: \xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd <ivan@example.ru>\n"
        b"Subject: Caf\xe9 cr\xe8me \x93special\x94\n\nhi\n"
    )
    msg = parse_message(raw)
    # latin-1 / windows-1252 bytes are read as such, valid UTF-8 as UTF-8
    assert msg.subject == "Café crème “special”"
    assert msg.from_ == Address("José", "jose@example.com")
    assert msg.to == (Address("Иван", "ivan@example.ru"),)
    assert msg.text == "hi\n"


def test_quoted_printable_body() -> None:
    body = b"Caf=C3=A9 ol=C3=A9 =E2=82=AC 5 and a soft=\nbreak\n"
    headers = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable"
    assert parse_message(raw_mail(headers, body)).text == "Café olé € 5 and a softbreak\n"


def test_base64_body() -> None:
    headers = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64"
    body = b"SGVsbG8gU2FtLAp0aGUgcHJvamVjdCBpcyBkb25lIOKclO+4jwo=\n"
    assert parse_message(raw_mail(headers, body)).text == "Hello Sam,\nthe project is done ✔️\n"


def test_windows_1252_body() -> None:
    body = "Price: 50€ – “quoted” naïve\n".encode("cp1252")
    msg = parse_message(raw_mail("Content-Type: text/plain; charset=windows-1252", body))
    assert msg.text == "Price: 50€ – “quoted” naïve\n"
    assert msg.defects == ()


def test_unknown_charset_still_yields_text() -> None:
    utf8 = parse_message(raw_mail("Content-Type: text/plain; charset=x-unknown", "café olé\n"))
    assert utf8.text == "café olé\n"
    assert any("x-unknown" in d for d in utf8.defects)

    latin = parse_message(
        raw_mail("Content-Type: text/plain; charset=x-unknown", "café olé\n".encode("latin-1"))
    )
    assert latin.text == "café olé\n"


def test_undeclared_8bit_body() -> None:
    msg = parse_message(raw_mail("Subject: x", "Grüße aus Köln\n".encode("latin-1")))
    assert msg.text == "Grüße aus Köln\n"


def test_invalid_utf8_in_utf8_body_is_replaced() -> None:
    body = "naïve ".encode() + b"\xff\xfe" + b" done\n"
    msg = parse_message(raw_mail("Content-Type: text/plain; charset=utf-8", body))
    assert msg.text == "naïve \ufffd\ufffd done\n"
    assert any("replacement" in d for d in msg.defects)


def test_nul_bytes_are_dropped() -> None:
    msg = parse_message(b"Subject: Pay\x00Pal\nFrom: a@b.example\n\nPay\x00Pal now\n")
    assert msg.subject == "PayPal"
    assert msg.text == "PayPal now\n"


# --------------------------------------------------------------------------------------
# HTML


HTML_ONLY = """\
<!doctype html>
<html><head><title>Invoice title</title>
<style>p { color: red } .x { display: none }</style>
<script>var secret = "script text";</script></head>
<body>
<!-- a comment with words -->
<div style="display: none">preheader hidden words</div>
<p>Join us on D<span>is</span>cord or Pay<b>Pal</b> &amp; <i>pay</i>&nbsp;now.</p>
<p>Second   paragraph<br>new line</p>
<ul><li>one</li><li>two</li></ul>
<table><tr><td>cell A</td><td>cell B</td></tr><tr><td>cell C</td></tr></table>
<p>Click <a href=" https://evil.example/login ">https://www.paypal.com/signin</a>
or <a href="https://example.org/help">the <b>help</b> page</a>.</p>
<noscript>noscript text</noscript>
<template>template text</template>
<p aria-hidden="true">aria text stays</p>
</body></html>
"""


def test_html_only_body() -> None:
    msg = parse_message(bytes(build(text=None, html=HTML_ONLY)))

    assert msg.text == ""
    assert msg.html_text == (
        "Join us on Discord or PayPal & pay now.\n"
        "Second paragraph\n"
        "new line\n"
        "one\n"
        "two\n"
        "cell A cell B\n"
        "cell C\n"
        "Click https://www.paypal.com/signin or the help page.\n"
        "aria text stays"
    )
    for gone in ("Invoice title", "script text", "color", "comment", "preheader", "noscript"):
        assert gone not in msg.html_text
    assert "template text" not in msg.html_text
    assert msg.links == (
        Link("https://www.paypal.com/signin", "https://evil.example/login"),
        Link("the help page", "https://example.org/help"),
    )
    assert "html: hidden text removed (20 chars)" in msg.defects
    assert msg.body == msg.html_text


@pytest.mark.parametrize(
    ("style", "hidden"),
    [
        ("display:none", True),
        ("DISPLAY : NONE !important", True),
        ("visibility:hidden", True),
        ("font-size:0", True),
        ("font-size: 0px", True),
        ("max-height:0; overflow:hidden", True),
        ("opacity:0", True),
        ("opacity: 0.0", True),
        ("max-height:0", False),
        ("opacity:0.5", False),
        ("font-size:0.8em", False),
        ("mso-hide:all", False),
        ("color:#fff", False),
    ],
)
def test_hidden_styles(style: str, hidden: bool) -> None:
    html = f'<p>Pay<span style="{style}">xyz</span>Pal</p>'
    msg = parse_message(bytes(build(text=None, html=html)))
    assert msg.html_text == ("PayPal" if hidden else "PayxyzPal")
    assert ("html: hidden text removed (3 chars)" in msg.defects) is hidden


def test_hidden_attribute_and_aria_hidden() -> None:
    html = '<div hidden>gone</div><div aria-hidden="true">kept</div>'
    msg = parse_message(bytes(build(text=None, html=html)))
    assert msg.html_text == "kept"


def test_font_size_zero_layout_container_keeps_sized_text() -> None:
    # E-mail templates (MJML, Mailchimp) set font-size:0 on layout cells and give the
    # text inside its own size: that text is visible and must stay.
    html = (
        '<table><tr><td style="font-size:0px;padding:0">'
        '<div style="font-size:16px;color:#333">Your invoice is ready</div>'
        '<div style="font-size:0">&nbsp;</div>'
        "</td></tr></table>"
    )
    msg = parse_message(bytes(build(text=None, html=html)))
    assert msg.html_text == "Your invoice is ready"
    assert not any("hidden" in d for d in msg.defects)


def test_font_size_zero_text_beside_sized_text_is_removed() -> None:
    html = '<div style="font-size:0">junk <span style="font-size:12px">see me</span> more</div>'
    msg = parse_message(bytes(build(text=None, html=html)))
    assert msg.html_text == "see me"
    assert "html: hidden text removed (8 chars)" in msg.defects


def test_zero_width_characters_are_removed_from_html_text() -> None:
    msg = parse_message(bytes(build(text=None, html="<p>Pay&#8203;Pal and What\u200dsApp</p>")))
    assert msg.html_text == "PayPal and WhatsApp"


def test_image_link_uses_alt_text() -> None:
    html = '<a href="https://x.example/"><img src="logo.png" alt="PayPal login"></a>'
    assert parse_message(bytes(build(text=None, html=html))).links == (
        Link("PayPal login", "https://x.example/"),
    )


def test_multipart_alternative_reads_both_parts() -> None:
    msg = parse_message(
        bytes(
            build(
                text="Plain version: visit www.example.org/a\n",
                html='<p>HTML version: <a href="https://example.org/a">visit</a></p>',
            )
        )
    )
    assert msg.text == "Plain version: visit www.example.org/a\n"
    assert msg.html_text == "HTML version: visit"
    # HTML anchors first, then the bare URLs of the plain text
    assert msg.links == (
        Link("visit", "https://example.org/a"),
        Link("www.example.org/a", "www.example.org/a"),
    )


# --------------------------------------------------------------------------------------
# URLs in plain text


def test_plain_text_url_extraction() -> None:
    text = (
        "See https://Example.com/a?b=1&c=2), then (http://x.example/path).\n"
        "Mirror: www.mirror.example/dl, chat on wa.me/15550100 or t.me/kim_hiring!\n"
        "Invite: discord.gg/abcd and discord.com/invite/xyz, not discord.com/about.\n"
        "Not links: user@wa.me/x, xhttps://nope.example, ftp://files.example\n"
        "Short: bit.ly/3xYz\n"
    )
    assert [link.href for link in parse_message(raw_mail("Subject: x", text)).links] == [
        "https://Example.com/a?b=1&c=2",
        "http://x.example/path",
        "www.mirror.example/dl",
        "wa.me/15550100",
        "t.me/kim_hiring",
        "discord.gg/abcd",
        "discord.com/invite/xyz",
        "bit.ly/3xYz",
    ]
    assert all(link.text == link.href for link in parse_message(raw_mail("S: x", text)).links)


def test_links_are_capped() -> None:
    text = "\n".join(f"https://spam.example/{i}" for i in range(MAX_LINKS + 50))
    assert len(parse_message(raw_mail("Subject: x", text)).links) == MAX_LINKS


# --------------------------------------------------------------------------------------
# Damaged and unusual structure


def test_no_body_at_all() -> None:
    msg = parse_message(b"From: Dana <dana@client.example>\nSubject: empty\n")
    assert msg.subject == "empty"
    assert msg.from_ == Address("Dana", "dana@client.example")
    assert msg.text == msg.html_text == ""
    assert msg.links == msg.attachments == ()


def test_broken_base64_body() -> None:
    headers = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64"
    msg = parse_message(raw_mail(headers, b"SGVsbG8gd29ybGQ*!!x\n"))
    assert msg.text.startswith("Hello world")
    assert "text part: damaged base64 content, read as far as possible" in msg.defects


def test_truncated_multipart_without_closing_boundary() -> None:
    raw = (
        b"Subject: cut\nContent-Type: multipart/alternative; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\n\nhello part\n"
        b"--XX\nContent-Type: text/html\n\n<p>Hi <b>the"
    )
    msg = parse_message(raw)
    assert msg.subject == "cut"
    assert msg.text == "hello part"
    assert msg.html_text == "Hi the"
    assert any("CloseBoundaryNotFoundDefect" in d for d in msg.defects)


def test_multipart_whose_boundary_never_comes() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=XX\n\njust some text\n"
    msg = parse_message(raw)
    assert msg.text == "just some text\n"
    assert any("StartBoundaryNotFoundDefect" in d for d in msg.defects)


def test_multipart_without_boundary_parameter() -> None:
    msg = parse_message(b"Content-Type: multipart/mixed\n\nraw text\n")
    assert msg.text == "raw text\n"
    assert any("NoBoundaryInMultipartDefect" in d for d in msg.defects)


def test_unparseable_date() -> None:
    msg = parse_message(raw_mail("Date: yesterday at noon\nSubject: x", "x"))
    assert msg.date is None
    assert "date header could not be parsed: 'yesterday at noon'" in msg.defects


def test_date_without_zone_is_read_as_utc() -> None:
    msg = parse_message(raw_mail("Date: Tue, 24 Sep 2024 11:15:27", "x"))
    assert msg.date == datetime(2024, 9, 24, 11, 15, 27, tzinfo=UTC)


def test_deep_nesting_does_not_raise() -> None:
    part = b"--a\nContent-Type: multipart/mixed; boundary=a\n\n"
    msg = parse_message(
        b"Subject: deep\nContent-Type: multipart/mixed; boundary=a\n\n" + part * 3000
    )
    assert msg.subject == "deep"
    assert isinstance(msg, Message)


# --------------------------------------------------------------------------------------
# Attachments


def test_nested_message_becomes_forwarded_attachment() -> None:
    inner = build(
        text="Send the money via PayPal: https://evil.example/pay\n",
        subject="pay me",
        sender="Scammer <s@evil.example>",
    )
    outer = build(text="FYI, is this legit?\n")
    outer.add_attachment(inner)  # message/rfc822, disposition attachment
    outer.add_attachment(
        b"%PDF-1.4\n%%EOF", maintype="application", subtype="pdf", filename="a.pdf"
    )
    msg = parse_message(bytes(outer))

    # The quoted message stays out of the sender's own text and links.
    assert msg.text == "FYI, is this legit?\n"
    assert msg.links == ()
    forwarded, pdf = msg.attachments
    assert forwarded.filename == "forwarded.eml"
    assert forwarded.declared_type == "message/rfc822"
    assert forwarded.text == (
        "From: Scammer <s@evil.example>\nSubject: pay me\n\n"
        "Send the money via PayPal: https://evil.example/pay\n"
    )
    assert forwarded.size > 0
    assert pdf.filename == "a.pdf"
    assert pdf.sniffed_type == "application/pdf"


def test_files_inside_a_forwarded_message_are_listed() -> None:
    inner = build(text="see zip")
    inner.add_attachment(zip_bytes(encrypted=True), "application", "zip", filename="x.zip")
    outer = build(text="fwd")
    outer.add_attachment(inner)
    names = [(a.filename, a.encrypted) for a in parse_message(bytes(outer)).attachments]
    assert names == [("forwarded.eml", False), ("x.zip", True)]


def test_inline_message_rfc822_is_read_as_body() -> None:
    raw = (
        b"Subject: outer\nContent-Type: multipart/mixed; boundary=B\n\n"
        b"--B\nContent-Type: text/plain\n\nouter text\n"
        b"--B\nContent-Type: message/rfc822\n\n"
        b"Subject: inner\nContent-Type: text/plain\n\ninner text https://x.example/\n"
        b"--B--\n"
    )
    msg = parse_message(raw)
    assert msg.subject == "outer"
    assert msg.text == "outer text\ninner text https://x.example/"
    assert msg.links == (Link("https://x.example/", "https://x.example/"),)
    assert msg.attachments == ()


def test_rtl_override_filename_is_kept_exactly() -> None:
    name = "invoice_\u202efdp.exe"
    msg = parse_message(with_attachments((b"MZ\x90\x00" + bytes(200), "application", "pdf", name)))
    (att,) = msg.attachments
    assert att.filename == name
    assert att.declared_type == "application/pdf"
    assert att.sniffed_type == "application/x-msdownload"


def test_rfc2047_encoded_filename() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nx\n"
        b"--B\nContent-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="=?utf-8?B?RmFrdHVyYV/DvC5wZGY=?="\n\n'
        b"abc\n--B--\n"
    )
    assert parse_message(raw).attachments[0].filename == "Faktura_ü.pdf"


def test_double_extension_executable() -> None:
    exe = b"MZ\x90\x00\x03\x00\x00\x00" + os.urandom(300)
    (att,) = parse_message(
        with_attachments((exe, "application", "pdf", "brief.pdf.exe"))
    ).attachments
    assert att.filename == "brief.pdf.exe"
    assert att.declared_type == "application/pdf"
    assert att.sniffed_type == "application/x-msdownload"
    assert att.size == len(exe)
    assert att.text == ""
    assert not att.encrypted


def test_small_text_attachment_text() -> None:
    data = b"Account: 12345\r\nSend to PayPal friends&family\r\n"
    (att,) = parse_message(with_attachments((data, "text", "plain", "notes.txt"))).attachments
    assert att.filename == "notes.txt"
    assert att.declared_type == "text/plain"
    assert att.sniffed_type == ""
    assert att.size == len(data)
    assert att.text == "Account: 12345\nSend to PayPal friends&family\n"


def test_html_attachment_text_is_visible_text() -> None:
    data = b"<html><body><h1>Sign in</h1><script>x()</script><p>Password</p></body></html>"
    (att,) = parse_message(with_attachments((data, "text", "html", "login.html"))).attachments
    assert att.text == "Sign in\nPassword"


def test_attachment_text_is_truncated() -> None:
    data = b"a" * (ATTACHMENT_TEXT_CHARS + 1000)
    (att,) = parse_message(with_attachments((data, "text", "plain", "long.txt"))).attachments
    assert att.size == len(data)
    assert len(att.text) == ATTACHMENT_TEXT_CHARS


def test_password_protected_zip_is_encrypted() -> None:
    raw = with_attachments(
        (zip_bytes(encrypted=True), "application", "zip", "secret.zip"),
        (zip_bytes(encrypted=False), "application", "zip", "plain.zip"),
    )
    secret, plain = parse_message(raw).attachments
    assert (secret.filename, secret.sniffed_type, secret.encrypted) == (
        "secret.zip",
        "application/zip",
        True,
    )
    assert (plain.filename, plain.sniffed_type, plain.encrypted) == (
        "plain.zip",
        "application/zip",
        False,
    )
    assert secret.size == len(zip_bytes(encrypted=True))


def test_zip_with_octet_stream_type_is_sniffed_as_zip() -> None:
    (att,) = parse_message(
        with_attachments((zip_bytes(encrypted=False), "application", "octet-stream", "x.bin"))
    ).attachments
    assert att.declared_type == "application/octet-stream"
    assert att.sniffed_type == "application/zip"


def test_encrypted_pdf() -> None:
    locked = b"%PDF-1.6\n1 0 obj <<>> endobj\ntrailer <</Root 1 0 R /Encrypt 5 0 R>>\n%%EOF\n"
    free = b"%PDF-1.6\n1 0 obj <<>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
    a, b = parse_message(
        with_attachments(
            (locked, "application", "pdf", "locked.pdf"), (free, "application", "pdf", "free.pdf")
        )
    ).attachments
    assert (a.sniffed_type, a.encrypted) == ("application/pdf", True)
    assert (b.sniffed_type, b.encrypted) == ("application/pdf", False)


def test_five_megabyte_attachment() -> None:
    big = random.Random(7).randbytes(5 * 1024 * 1024)
    raw = with_attachments((b"PK\x03\x04" + big, "application", "zip", "backup.zip"))
    msg = parse_message(raw)
    assert msg.text == "Please see the attached files.\n"
    (att,) = msg.attachments
    assert att.filename == "backup.zip"
    assert att.size == len(big) + 4
    assert att.sniffed_type == "application/zip"
    assert att.text == ""


def test_attachments_are_capped() -> None:
    files = [(b"x", "application", "octet-stream", f"f{i}.bin") for i in range(MAX_ATTACHMENTS + 5)]
    msg = parse_message(with_attachments(*files))
    assert len(msg.attachments) == MAX_ATTACHMENTS
    assert f"more than {MAX_ATTACHMENTS} attachments; the rest ignored" in msg.defects


# --------------------------------------------------------------------------------------
# Authentication-Results


def test_auth_results_failures() -> None:
    raw = raw_mail(
        "Authentication-Results: mx.example.org;\n"
        " spf=SoftFail (mx.example.org: domain of x@evil.example does not designate\n"
        " 192.0.2.1 as permitted sender) smtp.mailfrom=x@evil.example;\n"
        " dkim=fail (bad signature; key 1024 bits) header.d=evil.example;\n"
        " dmarc=fail (p=REJECT) header.from=paypal.com\n"
        "Authentication-Results: forged.example; spf=pass; dkim=pass; dmarc=pass",
        "x",
    )
    auth = parse_message(raw).auth
    assert (auth.spf, auth.dkim, auth.dmarc) == ("softfail", "fail", "fail")
    assert auth.dkim_domains == ()


def test_auth_results_dkim_pass_domain() -> None:
    raw = raw_mail(
        "Authentication-Results: mx.example.org; dkim=fail header.d=other.example;\n"
        " dkim=pass header.i=@Example.com header.s=s1 header.d=Example.com;\n"
        " spf=pass smtp.mailfrom=example.com; dmarc=pass header.from=example.com",
        "x",
    )
    auth = parse_message(raw).auth
    assert (auth.spf, auth.dkim, auth.dmarc) == ("pass", "pass", "pass")
    assert auth.dkim_domains == ("example.com",)


def test_auth_results_absent() -> None:
    auth = parse_message(b"Subject: x\n\nx").auth
    assert (auth.spf, auth.dkim, auth.dmarc, auth.dkim_domains) == ("", "", "", ())


# --------------------------------------------------------------------------------------
# Never raises, limits


def test_empty_bytes() -> None:
    msg = parse_message(b"")
    assert msg == Message()


def test_random_garbage_bytes() -> None:
    rng = random.Random(1234)
    for size in (1, 17, 500, 5000, 50_000):
        data = rng.randbytes(size)
        msg = parse_message(data)
        assert msg.size == size
        assert msg.from_ is None


def test_non_bytes_input_does_not_raise() -> None:
    assert parse_message("Subject: str input\n\nbody").subject == "str input"  # type: ignore[arg-type]
    assert parse_message(None).size == 0  # type: ignore[arg-type]
    assert parse_message(bytearray(b"Subject: ba\n\nx")).subject == "ba"  # type: ignore[arg-type]


def test_text_is_capped() -> None:
    body = ("word " * (MAX_TEXT_CHARS // 5 + 1000)).encode()
    msg = parse_message(raw_mail("Subject: big", body))
    assert len(msg.text) == MAX_TEXT_CHARS
    assert f"text truncated to {MAX_TEXT_CHARS} characters" in msg.defects


def test_text_fields_are_valid_unicode() -> None:
    raw = (
        b"Subject: =?utf-7?B?K2QtLQ==?= \xed\xa0\x80\n"
        b"Content-Type: text/plain; charset=utf-7\n\n+2D- lone surrogate\n"
    )
    msg = parse_message(raw)
    for value in (msg.subject, msg.text):
        value.encode("utf-8")  # no lone surrogates


_HEADER_LINES = st.sampled_from(
    [
        b"From: A <a@b.example>",
        b"Subject: =?utf-8?B?w7w=?=",
        b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: text/html; charset=x-bad",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Disposition: attachment; filename*=utf-8''%E2%80%AE.exe",
        b"Date: Mon, 99 Foo 2020",
        b"Authentication-Results: x; dkim=pass header.d=",
        b"--b",
        b"--b--",
        b"Content-Type: message/rfc822",
        b"",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(_HEADER_LINES, st.binary(max_size=80)), max_size=30),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_never_raises_on_mangled_mime(lines: list[bytes], newline: bytes) -> None:
    data = newline.join(lines)
    msg = parse_message(data)
    assert isinstance(msg, Message)
    assert msg.size == len(data)
    for value in (msg.subject, msg.text, msg.html_text, *msg.defects):
        value.encode("utf-8")


# --------------------------------------------------------------------------------------
# Reading with mail-parser: only the parts the guard uses, read as mail-parser reads them

ADDRESS_CASES = [
    "From: Dana Client <dana@client.example>\nTo: sam@example.org",
    "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>\nTo: a@x.example, b@y.example",
    'From: "Upwork Support" <support@upw0rk-verify.example>\nReply-To: billing@other.example',
    "From: dana@client.example <dana@client.example>\nCc: Team: a@x.example, b@x.example;",
    "From: broken <<a@x.example>\nTo: Undisclosed recipients:;",
    "From: a@x.example\nFrom: b@y.example\nTo: first@x.example\nTo: second@x.example",
]


@pytest.mark.parametrize("headers", ADDRESS_CASES)
def test_addresses_date_and_notes_as_mail_parser_reads_them(headers) -> None:
    import mailparser

    from guard.mail.mime import read_mail

    raw = raw_mail(f"{headers}\nDate: Tue, 24 Sep 2024 11:15:27 +0200\nSubject: x", "body\n")
    full = mailparser.parse_from_bytes(raw)
    lean = read_mail(raw)
    for key in ("from", "to", "cc", "reply-to"):
        assert lean.addresses.get(key, []) == (full.mail.get(key) or [])
    assert lean.date == full.date
    expected = [
        f"address-headers: {note}"
        for entry in full.defects
        for note in entry.get("address-headers", [])
    ]
    assert [n for n in lean.notes if n.startswith("address-headers")] == expected
    # Twice, to read the cached answers too.
    assert parse_message(raw) == parse_message(raw)


def test_notes_on_headers_the_guard_does_not_read_are_not_made() -> None:
    headers = (
        "Received: from a (b [10.0.0.1]) by c; Mon, 32 Foo 2024 99:99:99 +0000\n"
        "Delivered-To: not an address\nBcc: <<<\nDate: yesterday at noon\nFrom: a@x.example"
    )
    msg = parse_message(raw_mail(headers, "x"))
    assert not any("received" in d or "delivered-to" in d or "bcc" in d for d in msg.defects)
    assert any(d.startswith("date-headers: DateHeaderDefect: date[0]") for d in msg.defects)


def test_long_address_header_is_read_uncached() -> None:
    to = ", ".join(f"person{i}@example.org" for i in range(200))
    msg = parse_message(raw_mail(f"From: a@x.example\nTo: {to}", "x"))
    assert len(msg.to) == 200
    assert msg.to[-1].addr == "person199@example.org"


def test_latin1_label_reads_windows_1252_punctuation() -> None:
    headers = "Content-Type: text/plain; charset=iso-8859-1"
    msg = parse_message(raw_mail(headers, b"I\x92m here, \x93quoted\x94 \x80 5\n"))
    assert msg.text == "I\u2019m here, \u201cquoted\u201d \u20ac 5\n"


def test_tune_allocator_is_explicit_and_can_be_switched_off(monkeypatch) -> None:
    from guard.mail import tune_allocator

    monkeypatch.setenv("GUARD_MALLOC_DEFAULTS", "1")
    assert tune_allocator() is False
    monkeypatch.delenv("GUARD_MALLOC_DEFAULTS")
    assert isinstance(tune_allocator(), bool)


# --------------------------------------------------------------------------------------
# Limits: what was not read whole is sampled (beginning, end, every part) and named in
# Message.unchecked.

TAIL_SENTENCE = "the end of this message is still read"


def test_ordinary_mail_is_not_unchecked() -> None:
    msg = parse_message(bytes(build(text="Hi", html="<p>Hi</p>")))
    assert msg.unchecked == ()


def test_padded_text_keeps_its_end_and_is_unchecked() -> None:
    body = ("padding " * (MAX_TEXT_CHARS // 8 + 10) + "\n" + TAIL_SENTENCE).encode()
    msg = parse_message(raw_mail("Subject: padded", body))
    assert len(msg.text) <= MAX_TEXT_CHARS
    assert msg.text.startswith("padding") and msg.text.endswith(TAIL_SENTENCE)
    assert any("text truncated" in reason for reason in msg.unchecked)


def test_every_text_part_is_sampled_when_the_parts_are_too_long() -> None:
    parts = b"".join(
        b"--B\nContent-Type: text/plain\n\npart %d start " % i + b"x" * 400_000 + b" end %d\n" % i
        for i in range(4)
    )
    msg = parse_message(raw_mail('Content-Type: multipart/mixed; boundary="B"', parts + b"--B--\n"))
    assert len(msg.text) <= MAX_TEXT_CHARS
    for i in range(4):
        assert f"part {i} start" in msg.text and f"end {i}" in msg.text
    assert msg.unchecked


def test_parts_past_the_limit_still_read_the_last_ones() -> None:
    parts = b"--B\nContent-Type: text/plain\n\n\n" * (MAX_PARTS + 200)
    parts += b"--B\nContent-Type: text/plain\n\n" + TAIL_SENTENCE.encode() + b"\n--B--\n"
    msg = parse_message(raw_mail('Content-Type: multipart/mixed; boundary="B"', parts))
    assert TAIL_SENTENCE in msg.text
    assert any(f"more than {MAX_PARTS} MIME parts" in reason for reason in msg.unchecked)


def test_html_alternative_is_kept_beside_a_different_plain_part() -> None:
    msg = parse_message(bytes(build(text="See the HTML version.", html=f"<p>{TAIL_SENTENCE}</p>")))
    assert msg.text.strip() == "See the HTML version."
    assert msg.html_text == TAIL_SENTENCE


def test_huge_html_reads_its_beginning_and_its_end() -> None:
    html = "<p>first words</p><!--" + "x" * 2_500_000 + f"--><p>{TAIL_SENTENCE}</p>"
    msg = parse_message(raw_mail("Content-Type: text/html", html))
    assert "first words" in msg.html_text and TAIL_SENTENCE in msg.html_text
    assert any("html" in reason for reason in msg.unchecked)


def test_deeply_nested_html_is_read_without_its_deep_markup() -> None:
    depth = MAX_HTML_DEPTH * 20
    html = "<div>" * depth + f"<p>{TAIL_SENTENCE}</p>" + "</div>" * depth + "<p>after</p>"
    msg = parse_message(raw_mail("Content-Type: text/html", html))
    assert TAIL_SENTENCE in msg.html_text and "after" in msg.html_text
    assert any("nested deeper" in reason for reason in msg.unchecked)


def test_mismatched_end_tags_do_not_hide_html_depth() -> None:
    html = "<div></span>" * (MAX_HTML_DEPTH * 20) + TAIL_SENTENCE
    msg = parse_message(raw_mail("Content-Type: text/html", html))
    assert TAIL_SENTENCE in msg.html_text
    assert any("nested deeper" in reason for reason in msg.unchecked)


def test_mime_nesting_past_the_limit_is_read_as_text() -> None:
    raw = b"Content-Type: text/plain\n\n" + TAIL_SENTENCE.encode() + b"\n"
    for level in range(1000):
        b = b"L%d" % level
        raw = b'Content-Type: multipart/mixed; boundary="%s"\n\n--%s\n%s\n--%s--\n' % (
            b,
            b,
            raw,
            b,
        )
    msg = parse_message(b"From: a@x.example\nSubject: deep\n" + raw)
    assert msg.subject == "deep"
    assert TAIL_SENTENCE in msg.text
    assert any(f"deeper than {MAX_MIME_DEPTH}" in reason for reason in msg.unchecked)


def test_oversized_header_is_cut_before_parsing() -> None:
    raw = b"From: a@x.example\nSubject:" + b"\n folded" * 200_000 + b"\n\n" + b"body text"
    msg = parse_message(raw)
    assert msg.text.strip() == "body text"
    assert len(msg.subject) < MAX_HEADER_BYTES
    assert any("header Subject" in reason for reason in msg.unchecked)


def test_adjacent_encoded_words_are_all_decoded() -> None:
    subject = " ".join(["=?utf-8?q?ab?="] * 15_000)
    msg = parse_message(raw_mail(f"Subject: {subject}", "x"))
    assert msg.subject == "ab" * 15_000


def test_spent_time_budget_stops_reading_and_is_unchecked() -> None:
    raw = bytes(build(text=TAIL_SENTENCE, html=f"<p>{TAIL_SENTENCE}</p>"))
    msg = parse_message(raw, time_budget=-1.0)
    assert msg.subject == "Test"
    assert any("time budget" in reason for reason in msg.unchecked)
    assert parse_message(raw).unchecked == ()
