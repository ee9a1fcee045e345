"""Issue 13: QR codes in images and calendar invites become links the checks judge."""

from __future__ import annotations

import io
from email.message import EmailMessage

import pytest
import segno
from PIL import Image

from guard.mail import QR_MAX_IMAGES, parse_message
from guard.policy import evaluate, load_rules
from guard.policy.structural import run_checks


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def checks(rules, msg) -> set[str]:
    return {hit.check for hit in run_checks(rules.structural, msg)}


def qr_image(text: str, kind: str = "png") -> bytes:
    buf = io.BytesIO()
    if kind == "png":
        segno.make(text, error="m").save(buf, kind="png", scale=6, border=4)
        return buf.getvalue()
    png = io.BytesIO(qr_image(text))
    Image.open(png).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def mail(*images: tuple[str, bytes], inline: bool = False, subject: str = "Action required"):
    msg = EmailMessage()
    msg["From"] = "IT Service Desk <helpdesk@corp-mail.example>"
    msg["To"] = "me@freelancer.example"
    msg["Subject"] = subject
    msg.set_content("Scan the code below with your phone to keep access to your mailbox.")
    if inline:
        msg.add_alternative('<p>Scan the code:</p><img src="cid:code1">', subtype="html")
        html = msg.get_payload()[1]
        for name, data in images:
            html.add_related(data, "image", "png", cid="<code1>", filename=name)
    else:
        for name, data in images:
            sub = "jpeg" if name.endswith(".jpg") else "png"
            msg.add_attachment(data, maintype="image", subtype=sub, filename=name)
    return parse_message(msg.as_bytes())


def test_qr_link_is_read_and_judged_like_a_link(rules):
    msg = mail(("mfa.png", qr_image("https://45.61.137.22/owa/reauth")))
    att = msg.attachments[0]
    assert att.qr_codes == ("https://45.61.137.22/owa/reauth",)
    link = msg.links[-1]
    assert (link.text, link.href) == ("QR code in mfa.png", "https://45.61.137.22/owa/reauth")
    found = checks(rules, msg)
    assert {"phishing.qr-link", "phishing.ip-host"} <= found
    assert evaluate(rules, msg).risk != "none"


def test_inline_qr_with_lookalike_domain(rules):
    msg = mail(("image001.png", qr_image("https://upw0rk-verify.com/pay")), inline=True)
    found = checks(rules, msg)
    assert {"phishing.qr-link", "phishing.lookalike-domain"} <= found
    assert "phishing" in evaluate(rules, msg).categories


def test_qr_in_jpeg_on_lure_host(rules):
    msg = mail(("scan.jpg", qr_image("https://secure-docs-8812.web.app/login", "jpeg")))
    assert {"phishing.qr-link", "phishing.lure-host"} <= checks(rules, msg)


def test_ticket_qr_without_a_web_address_is_fine(rules):
    msg = mail(("ticket.png", qr_image("TICKET:EVT-2291;SEAT:14B;HOLDER:J.DOE")), subject="Ticket")
    assert msg.attachments[0].qr_codes == ("TICKET:EVT-2291;SEAT:14B;HOLDER:J.DOE",)
    assert "phishing.qr-link" not in checks(rules, msg)
    assert evaluate(rules, msg).risk == "none"


def test_qr_link_alone_is_only_supporting(rules):
    msg = mail(("menu.png", qr_image("https://quill-design.example/menu")), subject="Menu")
    assert "phishing.qr-link" in checks(rules, msg)
    assert evaluate(rules, msg).risk == "none"


def test_image_that_is_not_a_qr_code(rules):
    buf = io.BytesIO()
    Image.effect_noise((300, 200), 40).convert("RGB").save(buf, format="PNG")
    msg = mail(("photo.png", buf.getvalue()))
    assert msg.attachments[0].qr_codes == ()
    assert "phishing.qr-link" not in checks(rules, msg)
    assert msg.unchecked == ()


def test_corrupted_image_is_not_a_qr_and_does_not_fail_the_message():
    good = qr_image("https://45.61.137.22/x")
    broken = good[:60] + b"\x00garbage" * 50  # a PNG header, then nonsense
    msg = mail(("broken.png", broken))
    assert msg.attachments[0].sniffed_type == "image/png"
    assert msg.attachments[0].qr_codes == ()
    assert msg.unchecked == ()
    assert msg.text.startswith("Scan the code")


def test_decompression_bomb_is_skipped():
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000), 1).save(buf, format="PNG")  # 144 Mpx in a few KB
    assert len(buf.getvalue()) < 200_000
    msg = mail(("bomb.png", buf.getvalue()))
    assert msg.attachments[0].qr_codes == ()
    assert any("too large to search for a QR code" in d for d in msg.defects)
    assert msg.unchecked == ()


def test_qr_search_is_bounded_per_message():
    images = [(f"code{i}.png", qr_image(f"https://site{i}.example/")) for i in range(12)]
    msg = mail(*images)
    decoded = [a for a in msg.attachments if a.qr_codes]
    assert len(decoded) == QR_MAX_IMAGES
    assert any("not searched for QR codes" in d for d in msg.defects)


def invite(ics: str, sender: str, *, as_file: bool = True):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "me@freelancer.example"
    msg["Subject"] = "Invitation"
    msg.set_content("You have been invited to an event.")
    if as_file:
        msg.add_attachment(ics.encode(), maintype="text", subtype="calendar", filename="invite.ics")
    else:
        msg.add_alternative(ics, subtype="calendar")
    return parse_message(msg.as_bytes())


LURE_ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
    "SUMMARY:Payment on hold - verify your payout account\r\n"
    "DESCRIPTION:Your payout is on hold. Verify your account before the call:\\n"
    "https://payout-verif\r\n ication.example.net/login?id=77\\, or your funds are released"
    " to the client.\r\n"
    'LOCATION;ALTREP="https://payout-verification.example.net/room":Online\r\n'
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)
MEETING_ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\n"
    "SUMMARY:Brochure review\r\n"
    "DESCRIPTION:Agenda: layout\\, copy\\, next steps.\\nJoin Zoom: https://us02web.zoom.us/j/8"
    "1234567\\nNotes: https://quill-design.example/brief\r\n"
    "LOCATION:https://us02web.zoom.us/j/81234567\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_ics_lure_link(rules):
    msg = invite(LURE_ICS, "Payments Team <billing@client-payments.example>")
    (att,) = msg.attachments
    assert att.calendar
    assert "Verify your account before the call" in att.text
    assert "https://payout-verification.example.net/login?id=77" in att.text  # unfolded
    hrefs = {link.href for link in msg.links}
    assert "https://payout-verification.example.net/login?id=77" in hrefs
    assert "https://payout-verification.example.net/room" in hrefs
    assert "phishing.ics-link" in checks(rules, msg)
    assert "BEGIN:VCALENDAR" not in att.text


def test_inline_calendar_part_is_read_too(rules):
    msg = invite(LURE_ICS, "Payments Team <billing@client-payments.example>", as_file=False)
    assert any(a.calendar for a in msg.attachments)
    assert "phishing.ics-link" in checks(rules, msg)


def test_plain_meeting_invite(rules):
    msg = invite(MEETING_ICS, "Mara Quill <mara@quill-design.example>")
    (att,) = msg.attachments
    assert att.calendar and "Agenda: layout, copy, next steps." in att.text
    assert {link.href for link in att.links} == {
        "https://us02web.zoom.us/j/81234567",
        "https://quill-design.example/brief",
    }
    assert "phishing.ics-link" not in checks(rules, msg)
    assert evaluate(rules, msg).risk == "none"


def test_html_description_is_read_as_text():
    ics = (
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:Renewal\r\n"
        'DESCRIPTION:<p>Your plan renewed.<br />Call support: +1 555 0100</p><p><a href="h'
        'ttps://renew-desk.example.org/cancel">Cancel here</a></p>\r\n'
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    msg = invite(ics, "Billing <billing@renewals.example>")
    att = msg.attachments[0]
    assert "Call support: +1 555 0100" in att.text and "<p>" not in att.text
    assert [(link.text, link.href) for link in att.links] == [
        ("Cancel here", "https://renew-desk.example.org/cancel")
    ]
