"""Structural checks (sender, authentication, links, attachments) and user rule files."""

from __future__ import annotations

import pytest

from guard.mail import Address, Attachment, AuthResults, Link, Message
from guard.policy import RulesError, evaluate, load_rules

PASS = AuthResults(spf="pass", dkim="pass", dmarc="pass", dkim_domains=("upwork.com",))
CLIENT = Address("Dana Whitfield", "dana@whitfield-studio.example")


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def found(rules, msg: Message) -> set[str]:
    return {f.rule for f in evaluate(rules, msg).findings}


def client_mail(text: str, *links: tuple[str, str]) -> Message:
    """A message from the client with ``text`` and ``(link text, href)`` links."""
    return Message(from_=CLIENT, text=text, links=tuple(Link(t, href) for t, href in links))


def assert_phishing(rules, msg: Message, rule: str) -> None:
    """``rule`` fires on ``msg`` and the verdict counts the phishing category."""
    verdict = evaluate(rules, msg)
    assert rule in {f.rule for f in verdict.findings}
    assert "phishing" in verdict.categories


def assert_clean(rules, msg: Message) -> None:
    """No phishing finding at all on ``msg``, and no risk."""
    verdict = evaluate(rules, msg)
    assert not any(f.category == "phishing" for f in verdict.findings)
    assert verdict.risk == "none"


def file(name: str, *, encrypted: bool = False, declared: str = "application/octet-stream"):
    return Attachment(
        filename=name, declared_type=declared, sniffed_type="", size=2048, encrypted=encrypted
    )


def test_brand_display_name_from_foreign_domain(rules):
    msg = Message(
        from_=Address("Upwork Support", "help@account-center.example"),
        subject="Your account",
        text="Hello, please read the attached notice.",
    )
    assert_phishing(rules, msg, "phishing.brand-display-name")


@pytest.mark.parametrize("domain", ["upw0rk-verify.com", "upwork-billing.net", "xn--upwrk-lye.com"])
def test_lookalike_sender_domain(rules, domain):
    msg = Message(from_=Address("Billing", f"billing@{domain}"), subject="Invoice", text="Hi.")
    assert_phishing(rules, msg, "phishing.lookalike-domain")


def test_lookalike_link_domain(rules):
    msg = client_mail(
        "Check the milestone here.", ("Open milestone", "https://upw0rk-verify.com/milestone/1")
    )
    assert "phishing.lookalike-domain" in found(rules, msg)


def test_genuine_platform_mail_is_clean(rules):
    msg = Message(
        from_=Address("Upwork", "donotreply@upwork.com"),
        subject="You have a new message",
        text="You received a new message from your client. Log in to read it.",
        links=(Link("View message", "https://www.upwork.com/ab/messages/rooms/1"),),
        auth=PASS,
    )
    assert_clean(rules, msg)


def test_spoofed_platform_domain(rules):
    msg = Message(
        from_=Address("Upwork", "support@upwork.com"),
        subject="Payment on hold",
        text="Your payout is on hold.",
        auth=AuthResults(spf="fail", dkim="", dmarc="fail"),
    )
    assert_phishing(rules, msg, "phishing.spoofed-brand")


def test_link_text_shows_brand_but_goes_elsewhere(rules):
    msg = client_mail(
        "Please log in to accept the offer.",
        ("https://www.upwork.com/login", "https://login-session.example/u"),
    )
    verdict = evaluate(rules, msg)
    finding = next(f for f in verdict.findings if f.rule == "phishing.link-brand-mismatch")
    assert finding.category in verdict.categories


def test_honest_link_text_is_fine(rules):
    spec = "https://docs.whitfield-studio.example/spec"
    msg = client_mail("Spec is here.", (spec, spec))
    rules_found = found(rules, msg)
    assert "phishing.link-brand-mismatch" not in rules_found
    assert "phishing.link-text-mismatch" not in rules_found


@pytest.mark.parametrize(
    ("attachment", "rule"),
    [
        (file("invoice.exe"), "phishing.dangerous-attachment"),
        (file("brief.pdf.exe"), "phishing.double-extension"),
        (file("brief.pdf.exe"), "phishing.dangerous-attachment"),
        (file("invoice\u202egpj.exe"), "phishing.rtl-filename"),
        (file("report.docm"), "phishing.macro-attachment"),
        (
            file("files.zip", encrypted=True, declared="application/zip"),
            "phishing.encrypted-archive",
        ),
        (file("login.html", declared="text/html"), "phishing.html-attachment"),
    ],
    ids=["exe", "double-ext", "double-ext-dangerous", "rtl", "docm", "encrypted-zip", "html"],
)
def test_dangerous_attachments(rules, attachment, rule):
    msg = Message(from_=CLIENT, subject="Files", text="See attached.", attachments=(attachment,))
    assert_phishing(rules, msg, rule)


@pytest.mark.parametrize(
    "attachment",
    [
        file("brief.pdf", declared="application/pdf"),
        file("assets.zip", declared="application/zip"),
        file("mockups.png", declared="image/png"),
    ],
    ids=["pdf", "zip", "png"],
)
def test_ordinary_attachments(rules, attachment):
    msg = Message(from_=CLIENT, subject="Files", text="See attached.", attachments=(attachment,))
    assert_clean(rules, msg)


def reply_elsewhere(subject: str, text: str) -> Message:
    """A message from the client whose Reply-To is another domain's address."""
    other = Address("Dana", "dana@other-agency.example")
    return Message(from_=CLIENT, reply_to=(other,), subject=subject, text=text)


def test_reply_to_mismatch_alone_is_only_supporting(rules):
    msg = reply_elsewhere("Re: logo", "Thanks, the logo looks great.")
    verdict = evaluate(rules, msg)
    assert "phishing.reply-to-mismatch" in {f.rule for f in verdict.findings}
    assert verdict.risk == "none"
    assert verdict.categories == ()


def test_reply_to_mismatch_counts_with_scam_text(rules):
    msg = reply_elsewhere(
        "Account notice", "Verify your account within 24 hours or it will be suspended."
    )
    verdict = evaluate(rules, msg)
    rules_found = {f.rule for f in verdict.findings}
    assert {"phishing.reply-to-mismatch", "phishing.credential-lure"} <= rules_found
    assert "phishing" in verdict.categories
    assert verdict.risk != "none"


USER_RULES = """
[[rule]]
id = "user.test"
category = "scam"
score = 3.0
all = ["re:(a+)+$"]
description = "pathological pattern"
explanation = "test"
"""


def test_user_rule_file_with_pathological_pattern(tmp_path, rules):
    path = tmp_path / "mine.toml"
    path.write_text(USER_RULES, encoding="utf-8")
    user_rules = load_rules([path])
    assert str(path) in user_rules.sources
    msg = Message(from_=CLIENT, subject="aaa", text="a" * 10**6 + "b")
    verdict = evaluate(user_rules, msg)  # RE2: linear time, must simply complete
    assert verdict.risk in ("none", "low", "medium", "high")
    short = evaluate(user_rules, Message(from_=CLIENT, subject="x", text="aaaa"))
    assert "user.test" in {f.rule for f in short.findings}


@pytest.mark.parametrize(
    "content",
    [
        "[[rule]\nid = 'x'",  # invalid TOML
        "[[rule]]\nid = 'user.bad'\ncategory = 'scam'\nscore = 1.0\nall = ['re:(unclosed']\n",
    ],
    ids=["toml-syntax", "bad-regex"],
)
def test_broken_user_rules_file(tmp_path, content):
    path = tmp_path / "broken-rules.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RulesError) as excinfo:
        load_rules([path])
    assert "broken-rules.toml" in str(excinfo.value)
