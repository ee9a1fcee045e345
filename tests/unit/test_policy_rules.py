"""One firing message and one near miss for every text rule in rules.toml.

These test the rule layer (``engine.evaluate``): whether a rule fires and what its hand-set
score makes of the message alone. How the rules combine with concepts and learned scores
into the final verdict is tested in test_learned.py.
"""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.mail import Address, Attachment, AuthResults, Message
from guard.policy import evaluate, load_rules
from guard.policy.engine import _distance, _nearest, _within
from guard.policy.engine import evaluate as evaluate_rules
from guard.policy.terms import TermCompiler

CLIENT = Address("Dana Whitfield", "dana@whitfield-studio.example")
UPWORK = Address("Upwork", "donotreply@upwork.com")
UPWORK_AUTH = AuthResults(spf="pass", dkim="pass", dmarc="pass", dkim_domains=("upwork.com",))


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def mail(text: str = "", **kw) -> Message:
    kw.setdefault("from_", CLIENT)
    kw.setdefault("subject", "Re: your proposal")
    return Message(text=text, **kw)


def attached(filename: str) -> Message:
    att = Attachment(filename=filename, declared_type="image/jpeg", sniffed_type="", size=10)
    return mail("Here are the files.", attachments=(att,))


# Plain (non "re:") terms translate "[" and "]" literally, so character classes such as
# "(1|one)[- ]star", "licen[cs]e" and "authori[sz]ed" in rules.toml never match.

# (rule id, message, a piece of the original text the evidence must show)
POSITIVE = [
    (
        "payment.method-outside",
        mail("Happy with the draft. I can send the money through PayPal, outside Upwork."),
        "PayPal",
    ),
    (
        "payment.method-outside",
        mail("Hola, te pago por PayPal fuera de la plataforma, así es más fácil."),
        "PayPal",
    ),
    (
        "payment.pay-directly",
        mail("For the next milestone I'd rather pay you directly, it is simpler."),
        "directly",
    ),
    (
        "payment.pay-directly",
        mail("Добрый день! Заплачу вам напрямую, без биржи, так быстрее."),
        "напрямую",
    ),
    (
        "payment.pay-directly",
        mail("Oi! Posso fazer o pagamento diretamente para você, sem a plataforma."),
        "diretamente",
    ),
    (
        "payment.avoid-fees",
        mail("If I pay you by bank transfer we both avoid the fees, deal?"),
        "fees",
    ),
    (
        "payment.avoid-fees",
        mail("Bonjour, je peux vous payer par virement pour éviter les frais de la plateforme."),
        "frais",
    ),
    (
        "payment.send-details",
        mail("Great work. Send me your PayPal email and I'll settle the invoice tonight."),
        "PayPal",
    ),
    (
        "payment.send-details",
        mail("Hallo, schicken Sie mir Ihre Bankverbindung, dann überweise ich den Betrag."),
        "Bankverbindung",
    ),
    (
        "payment.p2p-transfer",
        mail("I can pay you via Zelle today if you finish the logo."),
        "Zelle",
    ),
    (
        "payment.gift-cards",
        mail("Budget is tight, so I will pay you in Amazon gift cards this time."),
        "gift cards",
    ),
    (
        "payment.outside-phrase",
        mail("For phase two we can pay you outside Upwork, same rate."),
        "outside Upwork",
    ),
    (
        "contact.messenger-move",
        mail("Let's continue on WhatsApp, it's much faster for quick questions."),
        "WhatsApp",
    ),
    (
        "contact.messenger-move",
        mail("Oi, tudo bem? Me chama no zap que a gente combina os detalhes."),
        "zap",
    ),
    (
        "contact.messenger-link",
        mail("Tap here to talk: https://wa.me/15551234567"),
        "wa.me",
    ),
    (
        "contact.messenger-handle",
        mail("Quick one before the interview, my Telegram is @dev_maria_k"),
        "@dev_maria_k",
    ),
    (
        "contact.obfuscated-phone",
        mail("Reach me at six one seven five five five zero one four two after 5pm."),
        "six one seven",
    ),
    (
        "contact.obfuscated-email",
        mail("Write to me at john dot doe at gmail dot com about the brief."),
        "john dot doe",
    ),
    (
        "contact.phone-call",
        mail("Before I hire you, call me at +1 415 555 0199 so we can talk it through."),
        "415 555 0199",
    ),
    (
        "contact.email-move",
        mail("About your proposal: email me at mark.hill@gmail.com and we sort out the details."),
        "mark.hill@gmail.com",
    ),
    (
        "contact.chat-complaint",
        mail("The chat here is so slow, add me on WhatsApp please."),
        "chat here is",
    ),
    (
        "contact_request.personal-details",
        mail("Can you send me your personal email and your WhatsApp number?"),
        "personal email",
    ),
    (
        "contact_request.list",
        mail("We need the following from you: full legal name, home address and a CV."),
        "home address",
    ),
    (
        "contact_request.phone-or-email",
        mail("Please send me your phone number and your home address for the courier."),
        "phone number",
    ),
    (
        "personal_data.request",
        mail("To set you up in payroll, send a scan of your passport and your SSN."),
        "SSN",
    ),
    (
        "personal_data.request-list",
        mail("For onboarding we need: passport copy, date of birth and online banking login."),
        "passport",
    ),
    (
        "personal_data.exposed",
        mail("As requested, my date of birth: 12/03/1990 and I live in Leeds."),
        "date of birth",
    ),
    ("personal_data.id-document-file", attached("passport_scan.jpg"), "passport_scan"),
    (
        "personal_data.code-forward",
        mail("You'll get a verification code by SMS in a minute, just send it to me here."),
        "verification code",
    ),
    (
        "scam.code-takeover",
        mail("Upwork will text you a 6-digit code now. Tell me the code so I can link the team."),
        "code",
    ),
    (
        "scam.fake-check",
        mail(
            "I will mail you a cashier's check for $3,000. Deposit it and send the rest "
            "to our equipment vendor."
        ),
        "cashier's check",
    ),
    (
        "scam.pay-to-work",
        mail(
            "Before starting you must purchase the design software license from our "
            "authorized vendor. You will be reimbursed with the first paycheck."
        ),
        "authorized vendor",
    ),
    (
        "scam.fee-to-work",
        mail("To activate your position, pay the $50 registration fee via Cash App."),
        "registration fee",
    ),
    (
        "scam.refund-the-difference",
        mail("Oops, I sent $900 instead of $90 by mistake, please refund the difference."),
        "refund the difference",
    ),
    (
        "scam.crypto-investment",
        mail("Join my crypto trading bot, guaranteed 5% daily returns, minimum deposit $200."),
        "crypto",
    ),
    (
        "scam.reshipping",
        mail("You will receive packages at home and reship them with our prepaid labels."),
        "receive packages",
    ),
    (
        "scam.account-rental",
        mail("I want to rent your Upwork account, you get 30% of every payment."),
        "rent your Upwork account",
    ),
    (
        "scam.gift-card-purchase",
        mail("Buy five Apple gift cards and send me photos of the codes, urgent."),
        "gift cards",
    ),
    (
        "scam.too-good",
        mail("Simple data entry, no experience needed, $45/hour, start today."),
        "no experience",
    ),
    (
        "scam.advance-fee",
        mail(
            "I am a barrister. My late client left $12.5 million in a dormant account "
            "and you can be the beneficiary."
        ),
        "dormant account",
    ),
    (
        "scam.lottery",
        mail("Congratulations, you have won $500,000 in our lottery! Contact our agent to claim."),
        "lottery",
    ),
    (
        "phishing.credential-lure",
        mail("Verify your account within 24 hours or it will be suspended."),
        "Verify your account",
    ),
    (
        "phishing.enable-content",
        mail("Open the attached invoice and click Enable Content to see it."),
        "Enable Content",
    ),
    (
        "phishing.archive-password",
        mail("The specs are in the attachment. Archive password: 7781."),
        "password",
    ),
    (
        "dispute.refund-demand",
        mail("This is not what we agreed. I want a full refund today."),
        "refund",
    ),
    (
        "dispute.refund-demand",
        mail("El trabajo no sirve. Exijo un reembolso completo."),
        "reembolso",
    ),
    (
        "dispute.contract-cancelled",
        mail("I'm cancelling the contract and I expect a refund for milestone 2."),
        "cancelling the contract",
    ),
    (
        "dispute.refuse-pay",
        mail("I won't pay for this, the design looks nothing like the brief."),
        "won't pay",
    ),
    (
        "dispute.threat",
        mail("Fix it today or I will leave a bad review and open a dispute."),
        "bad review",
    ),
    (
        "dispute.threat",
        mail("Refund me by Friday or I file a chargeback with my bank."),
        "chargeback",
    ),
    pytest.param(
        "dispute.threat",
        mail("Fix it today or I will leave you a one-star review."),
        "one-star",
    ),
    pytest.param(
        "scam.pay-to-work",
        mail("You must buy the licence from our authorised vendor; it is reimbursed later."),
        "authorised vendor",
    ),
    pytest.param(
        "personal_data.request",
        mail("For the background check send me your driver's license."),
        "driver's license",
    ),
    pytest.param(
        "phishing.credential-lure",
        mail("Unauthorized sign-in detected. Verify your account now."),
        "Verify your account",
    ),
    (
        "dispute.scope-creep",
        mail("The extra pages obviously should be done for the same price."),
        "same price",
    ),
    (
        "dispute.platform-notice",
        mail("Your client has filed a dispute on contract 1234.", from_=UPWORK, auth=UPWORK_AUTH),
        "filed a dispute",
    ),
]

NEWSLETTER = dict(
    from_=Address("Freelance Weekly", "news@freelanceweekly.example"),
    list_id="<weekly.freelanceweekly.example>",
)

# (rule id that must NOT fire, message)
NEGATIVE = [
    (
        "payment.method-outside",
        mail(
            "Payment released! You can withdraw to PayPal or Payoneer directly from your "
            "earnings page.",
            from_=UPWORK,
            auth=UPWORK_AUTH,
        ),
    ),
    (
        "payment.pay-directly",
        mail("We need a PayPal integration so customers can pay directly in our shop."),
    ),
    (
        "payment.avoid-fees",
        mail("I know Upwork takes a cut, but let's keep all payments on Upwork."),
    ),
    (
        "payment.send-details",
        mail("Please don't send me your bank details, payment goes through Upwork."),
    ),
    (
        "payment.p2p-transfer",
        mail("Just so you know, I never send Zelle payments to freelancers, only Upwork."),
    ),
    ("payment.gift-cards", mail("Don't worry, we will never pay you in gift cards.")),
    (
        "payment.outside-phrase",
        mail("Forget what I said about paying outside Upwork, we keep it all on the platform."),
    ),
    (
        "contact.messenger-move",
        mail("We need a Telegram bot that lets customers chat with us about their orders."),
    ),
    (
        "contact.messenger-move",
        mail("Thanks for the offer, but I don't use WhatsApp for client work. Let's talk here."),
    ),
    ("contact.messenger-link", mail("Our venue page is https://ottawa.me/events, see you there.")),
    (
        "contact.messenger-handle",
        mail("Our Telegram channel @acme_news posts the release notes for the app."),
    ),
    (
        "contact.obfuscated-phone",
        mail("Best regards,\nAnna Weber\nProject Manager\nPhone: +49 30 1234567"),
    ),
    ("contact.obfuscated-email", mail("Thanks!\nJane Doe | jane.doe@acme-studio.example")),
    (
        "contact.phone-call",
        mail(
            "Thanks for your proposal.\n\nBest regards,\nTom Ellis\nEllis & Co.\n"
            "Mobile: +44 7700 900123"
        ),
    ),
    (
        "contact.email-move",
        mail(
            "If you have any questions about your proposal, feel free to email me at tom@ellis.io"
        ),
    ),
    ("contact.chat-complaint", mail("The Upwork chat works fine for me, let's keep using it.")),
    (
        "contact_request.personal-details",
        mail("Please don't send me your personal number, Upwork messages are fine."),
    ),
    (
        "contact_request.list",
        mail("We need the following from you: portfolio link, hourly rate and availability."),
    ),
    (
        "contact_request.phone-or-email",
        mail("I won't ask for your phone number, we can talk on Upwork."),
    ),
    ("personal_data.request", mail("Please don't send me your SSN, I don't need it.")),
    (
        "personal_data.request",
        mail(
            "A new sign-in from Chrome on Linux. If this was you, ignore this email. "
            "If not, reset your password from the account page."
        ),
    ),
    (
        "personal_data.request-list",
        mail("I need the zip password to open the file you shared."),
    ),
    ("personal_data.exposed", mail("Never share your date of birth with clients.")),
    ("personal_data.id-document-file", attached("passage_notes.pdf")),
    (
        "personal_data.code-forward",
        mail("Never send the verification code to anyone, not even to me."),
    ),
    ("scam.code-takeover", mail("Never send the verification code to anyone, not even to me.")),
    (
        "scam.fake-check",
        mail("Beware of scams: someone may mail you a check and ask you to deposit it."),
    ),
    ("scam.pay-to-work", mail("We will purchase the software license for you, no cost to you.")),
    (
        "scam.fee-to-work",
        mail("We cover the registration fee for the design conference and your travel."),
    ),
    (
        "scam.refund-the-difference",
        mail("Our shop's refund feature lets the admin refund the difference to customers."),
    ),
    (
        "scam.crypto-investment",
        mail("Beware of crypto schemes: guaranteed returns are a scam."),
    ),
    ("scam.reshipping", mail("You will receive packages of printed brochures for the event.")),
    (
        "scam.account-rental",
        mail("Please don't share your Upwork account with anyone, it breaks the terms."),
    ),
    ("scam.gift-card-purchase", mail("Customers can buy gift cards on the shop homepage.")),
    ("scam.too-good", mail("No experience needed for this volunteer translation role.")),
    ("scam.advance-fee", mail("I'm a barrister looking for a website redesign for my chambers.")),
    ("scam.lottery", mail("Beware: a 'you have won a lottery' mail is a scam, never claim it.")),
    (
        "phishing.credential-lure",
        mail(
            "Verify your account within 24 hours to keep receiving job invites.",
            from_=UPWORK,
            auth=UPWORK_AUTH,
        ),
    ),
    (
        "phishing.enable-content",
        mail("To edit the template, enable editing in Word.", from_=UPWORK, auth=UPWORK_AUTH),
    ),
    ("phishing.archive-password", mail("I forgot my email password, sorry for the delay.")),
    (
        "dispute.refund-demand",
        mail("Our shop needs a refunds API so customers can request a full refund in one click."),
    ),
    (
        "dispute.contract-cancelled",
        mail("We're ending the project on a high note, thanks for the great work!"),
    ),
    (
        "dispute.refuse-pay",
        mail("I won't approve the milestone until the fixes are in, then it's all good."),
    ),
    ("dispute.threat", mail("I would never leave a bad review over a small delay.")),
    (
        "dispute.threat",
        mail("Please translate our refund page: returns, exchanges and the chargeback section."),
    ),
    ("dispute.scope-creep", mail("The extra pages will be billed as a new milestone.")),
    (
        "dispute.platform-notice",
        mail(
            "Feature request: the admin dashboard should show when a customer has filed a dispute."
        ),
    ),
    (
        "payment.method-outside",
        mail(
            "Red flags to watch: a client who wants to pay via PayPal outside Upwork, or "
            "asks you to move to WhatsApp.",
            **NEWSLETTER,
        ),
    ),
]


def _ids(cases):
    return [(c.values if hasattr(c, "values") else c)[0] for c in cases]


@pytest.mark.parametrize(("rule_id", "msg", "evidence"), POSITIVE, ids=_ids(POSITIVE))
def test_rule_fires(rules, rule_id, msg, evidence):
    verdict = evaluate_rules(rules, msg)
    by_rule = {f.rule: f for f in verdict.findings}
    assert rule_id in by_rule, [f.rule for f in verdict.findings]
    finding = by_rule[rule_id]
    assert finding.category in verdict.categories
    assert evidence.lower() in finding.evidence.lower()
    assert finding.explanation.strip()
    assert verdict.risk != "none"


@pytest.mark.parametrize(("rule_id", "msg"), NEGATIVE, ids=_ids(NEGATIVE))
def test_near_miss_does_not_fire(rules, rule_id, msg):
    verdict = evaluate_rules(rules, msg)
    assert rule_id not in {f.rule for f in verdict.findings}


def test_newsletter_quoting_red_flags_is_harmless(rules):
    msg = mail(
        "Red flags to watch this week: a client who wants to pay via PayPal outside Upwork, "
        "or asks you to move to WhatsApp.",
        **NEWSLETTER,
    )
    assert evaluate(rules, msg).risk == "none"


def test_every_text_rule_has_a_positive_and_a_negative_case():
    doc = tomllib.loads(
        resources.files("guard.policy").joinpath("rules.toml").read_text(encoding="utf-8")
    )
    text_rules = {r["id"] for r in doc["rule"]}
    assert text_rules <= set(_ids(POSITIVE))
    assert text_rules <= set(_ids(NEGATIVE))


def test_languages_are_covered(rules):
    texts = [(c.values if hasattr(c, "values") else c)[1].text for c in POSITIVE]
    markers = {"es": "fuera de la plataforma", "pt": "diretamente", "fr": "virement"}
    markers |= {"de": "Bankverbindung", "ru": "напрямую"}
    for marker in markers.values():
        assert any(marker in t for t in texts)


# --------------------------------------------------------------------------------------
# The nearest-span searches give what a scan over every span gives.


@st.composite
def text_and_spans(draw):
    """A text of words and spaces, a span in it, and ordered, non-overlapping spans (some
    empty), as ``finditer`` produces them."""
    norm = draw(st.text(alphabet="ab ", max_size=40))
    spans, pos = [], 0
    for _ in range(draw(st.integers(0, 8))):
        pos += draw(st.integers(0, 4))
        if pos > len(norm):
            break
        end = min(len(norm), pos + draw(st.integers(0, 3)))
        spans.append((pos, end))
        pos = end if end > pos else pos + 1
    start = draw(st.integers(0, len(norm)))
    x = (start, min(len(norm), start + draw(st.integers(0, 4))))
    return norm, x, spans, draw(st.integers(-1, 5))


@settings(max_examples=500)
@given(text_and_spans())
def test_nearest_and_within_agree_with_a_full_scan(case):
    norm, x, spans, limit = case
    best, best_d = None, limit + 1
    for span in spans:
        d = _distance(norm, x, span)
        if d < best_d:
            best, best_d = span, d
    assert _nearest(norm, x, spans, limit) == best
    if limit >= 0:
        near = [s for s in spans if _distance(norm, x, s) <= limit]
        assert _within(norm, x, spans, limit) == near


def test_rule_far_into_a_long_body_fires_with_evidence(rules):
    filler = "\n\n".join(" ".join(["project milestone review"] * 20) for _ in range(60))
    text = f"{filler}\n\nCan you send me your PayPal so I pay you directly and we avoid the fees?"
    verdict = evaluate(rules, mail(text))
    found = [f for f in verdict.findings if f.category == "off_platform_payment"]
    assert found
    assert "PayPal" in found[0].evidence


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("pay me with cashapp", True),
        ("pay me with cash app", True),
        ("pay me with cash-app", True),
        ("the cashapplication form", False),
        ("cash and apples", False),
    ],
)
def test_optional_separator_matches_the_glued_word(text, found):
    pattern = TermCompiler({}, "test").term_body("cash ?app")
    assert (re2.search(pattern, text) is not None) is found
