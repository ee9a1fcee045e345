"""Issue 13: a well-known sender claimed by someone else, together with a lure, is phishing;
the same brand's genuine mail, or a brand merely mentioned, is not.

Per brand family a lure that must fire and the genuine notice from the brand's own domain
that must not; per lure language a courier/bank/mail lure that must fire."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from guard.mail import parse_message
from guard.policy import evaluate, load_rules

RULE = "phishing.brand-impersonation"


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def mail(
    sender: str,
    subject: str,
    text: str,
    link: str = "https://kq7zt-notice.example.org/start",
    *,
    dkim: str = "",
):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "me@freelancer.example"
    msg["Subject"] = subject
    if dkim:
        msg["Authentication-Results"] = f"mx.freelancer.example; dkim=pass header.d={dkim}"
    msg.set_content(text)
    msg.add_alternative(
        f'<html><body><p>{text}</p><p><a href="{link}">Continue</a></p></body></html>',
        subtype="html",
    )
    return parse_message(msg.as_bytes())


def fired(rules, msg, rule: str = RULE) -> bool:
    return any(f.rule == rule for f in evaluate(rules, msg).findings)


def finding(rules, msg, rule: str = RULE):
    """The verdict on ``msg`` and its finding of ``rule`` (there must be one)."""
    verdict = evaluate(rules, msg)
    return verdict, next(f for f in verdict.findings if f.rule == rule)


# family -> (display name, the brand's real sending address, a lure in English)
FAMILIES = {
    "bank": (
        "Barclays",
        "alerts@barclays.co.uk",
        "We noticed unusual sign-in activity. Verify your account within 24 hours.",
    ),
    "payment": (
        "Payoneer",
        "no-reply@payoneer.com",
        "Your payout is on hold. Confirm your payment details to release it.",
    ),
    "mail_cloud": (
        "Microsoft 365",
        "account-security-noreply@accountprotection.microsoft.com",
        "Your mailbox storage is full and incoming messages are on hold.",
    ),
    "courier": (
        "DHL Express",
        "noreply@dhl.com",
        "Your parcel is held at customs. Pay the customs fee of 2.99 EUR to release it.",
    ),
    "streaming": (
        "Netflix",
        "info@mailer.netflix.com",
        "We couldn't process your payment. Update your payment method to keep watching.",
    ),
    "government": (
        "HMRC",
        "noreply@tax.service.gov.uk",
        "You are eligible for a tax refund of 264.10 GBP. Claim your tax refund online.",
    ),
    "esign": (
        "DocuSign",
        "dse@docusign.net",
        "A document has been shared with you for signature. Review the document.",
    ),
    "crypto": (
        "Coinbase",
        "no-reply@coinbase.com",
        "The token airdrop is live: claim your tokens before the distribution ends.",
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_claimed_from_elsewhere_fires(rules, family):
    name, _real, lure = FAMILIES[family]
    msg = mail(f"{name} <notice@kq7zt-mailer.example.net>", "Action needed", lure)
    verdict, hit = finding(rules, msg)
    assert "phishing" in verdict.categories
    # the evidence names the brand claimed and where the mail really came from
    assert "kq7zt-mailer.example.net" in hit.evidence
    assert name.split()[0].lower() in hit.evidence.lower()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_genuine_mail_from_its_own_domain_is_quiet(rules, family):
    name, real, lure = FAMILIES[family]
    domain = real.rpartition("@")[2]
    msg = mail(f"{name} <{real}>", "Action needed", lure, link=f"https://www.{domain}/account")
    assert not fired(rules, msg)


# language -> (display name, lure): a lure in the language, claimed by a brand of the region
LANGUAGES = {
    "en": ("Royal Mail", "Your parcel could not be delivered. Pay the redelivery fee today."),
    "es": (
        "Correos",
        "Su paquete está retenido en aduana. Pague la tasa de aduana para recibirlo.",
    ),
    "pt": ("CTT", "A sua encomenda está retida. Pague a taxa alfandegária para a receber."),
    "fr": (
        "La Poste",
        "Votre colis est en attente. Réglez les frais de livraison pour le recevoir.",
    ),
    "de": ("DHL", "Ihr Paket wird zurückgehalten. Bitte zahlen Sie die Zollgebühr."),
    "nl": ("PostNL", "Uw pakket wordt vastgehouden. Betaal de invoerrechten om het te ontvangen."),
    "it": ("Poste Italiane", "Il tuo conto è stato sospeso. Verifica il tuo account entro 24 ore."),
    "ru": ("Сбербанк", "Ваш аккаунт заблокирован. Подтвердите ваши данные по ссылке."),
    "pl": ("InPost", "Twoja paczka czeka. Opłać dopłatę za dostawę, aby ją odebrać."),
    "tr": ("PTT", "Kargonuz bekletiliyor. Gümrük ücretini ödeyerek teslimatı planlayın."),
    "id": ("BCA", "Akun anda diblokir. Verifikasi akun anda melalui tautan berikut."),
}


@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_lure_language_fires(rules, lang):
    name, lure = LANGUAGES[lang]
    msg = mail(f"{name} <notice@kq7zt-mailer.example.net>", "!", lure)
    assert fired(rules, msg), (lang, [f.rule for f in evaluate(rules, msg).findings])


# --- one message, one check: it fires or it stays quiet -------------------------------

LURE_LINK = "phishing.lure-link"
ADDRESS_IN_SUBJECT = "phishing.address-in-subject"
HOSTED_SENDER = "phishing.hosted-sender"


def case(name, rule, expect, sender, subject, text, link=None, *, dkim="", category=""):
    """One message of a table below: the check, what it must give, the message's parts."""
    return pytest.param(rule, expect, sender, subject, text, link, dkim, category, id=name)


CASES = [
    case(
        "display-name-with-a-link-to-a-third-site-fires",
        RULE,
        True,
        "DHL Express <news@kq7zt-mailer.example.net>",
        "Our opening hours",
        "Our shop is closed on Monday.",
        link="https://kq7zt-track.example.org/id",
    ),
    # a shop newsletter named after its courier partner, no lure and no third site
    case(
        "brand-in-display-name-alone-is-not-enough",
        RULE,
        False,
        "DHL Express <news@kq7zt-mailer.example.net>",
        "Our opening hours",
        "Our shop is closed on Monday.",
        link="https://kq7zt-mailer.example.net/hours",
    ),
    case(
        "colleague-mentioning-a-bank-is-quiet",
        RULE,
        False,
        "Ana Ribeiro <ana@ribeiro-studio.example>",
        "Invoice for March",
        "I paid the March invoice from my Barclays account this morning, it should arrive "
        "tomorrow. Thanks for the quick delivery!",
        link="https://ribeiro-studio.example/portfolio",
    ),
    # "Chase" is a first name as well as a bank: a person's full name is not the bank
    case(
        "generic-brand-name-as-a-person-is-quiet",
        RULE,
        False,
        "Chase Miller <chase.miller@kq7zt-mailer.example.net>",
        "Please verify",
        "Please verify your account details on the staging server within 24 hours.",
    ),
    # sent through a mail service, signed by the brand's own domain
    case(
        "dkim-signature-of-the-brand-counts-as-genuine",
        RULE,
        False,
        "Netflix <info@esp-sender.example.net>",
        "Payment problem",
        "We couldn't process your payment. Update your payment method.",
        dkim="netflix.com",
    ),
    case(
        "small-capitals-display-name-fires",
        RULE,
        True,
        "ᴅʜʟ ᴇxᴘʀᴇss <notice@kq7zt-mailer.example.net>",
        "Delivery",
        "Your parcel is waiting: pay the redelivery fee to schedule a new delivery.",
    ),
    # a brand claimed in the subject needs a lure and a link away
    case(
        "claim-in-subject-with-lure-and-link-away-fires",
        RULE,
        True,
        "Service <info@kq7zt-mailer.example.net>",
        "DHL: delivery notice",
        "Your parcel is held: pay the customs fee to release your package.",
    ),
    # no lure: a shop's shipping confirmation naming its courier
    case(
        "claim-in-subject-without-lure-is-quiet",
        RULE,
        False,
        "Orders <orders@kq7zt-mailer.example.net>",
        "Shipped with DHL",
        "Your order has shipped and will arrive on Thursday.",
    ),
    # a streaming service's genuine notice that names the card network
    case(
        "known-brand-naming-another-brand-is-quiet",
        RULE,
        False,
        "Spotify <no-reply@spotify.com>",
        "Visa card payment problem",
        "We couldn't process your payment with your Visa card. Update your payment method.",
        link="https://www.spotify.com/account",
    ),
    # a lure with no brand claimed
    case(
        "lure-from-free-hosting-address-fires",
        LURE_LINK,
        True,
        "Rewards <noreply@spin-4411.firebaseapp.com>",
        "Your reward",
        "Congratulations, you have been selected: claim your reward now.",
        link="https://spin-4411.firebaseapp.com/claim",
    ),
    case(
        "lure-with-third-site-and-a-shortener-fires-without-call-to-click",
        LURE_LINK,
        True,
        "Support <team@kq7zt-mailer.example.net>",
        "Account",
        "Your account has been suspended until you confirm your payment details.",
        link="https://bit.ly/3xYzAbc",
    ),
    # a lure-like sentence and a link elsewhere, nothing else deceitful: not flagged
    case(
        "lure-with-third-site-alone-is-not-enough",
        LURE_LINK,
        False,
        "Support <team@kq7zt-mailer.example.net>",
        "Account",
        "Your account has been suspended until you confirm your payment details.",
    ),
    # a service confirming which address was added to a shared folder
    case(
        "own-address-in-subject-without-pressure-is-quiet",
        ADDRESS_IN_SUBJECT,
        False,
        "Files <files@kq7zt-mailer.example.net>",
        "me@freelancer.example was added to the project folder",
        "You can now see the project folder.",
        link="https://kq7zt-mailer.example.net/folder",
    ),
    case(
        "sender-on-free-hosting-subdomain-fires",
        HOSTED_SENDER,
        True,
        "Rewards Team <noreply@spin-4411.firebaseapp.com>",
        "Hello",
        "Have a look at our new collection.",
        link="https://spin-4411.firebaseapp.com/",
    ),
    # a form builder's own notification (its apex domain) is its mail, not a hosted site
    case(
        "form-service-own-notice-is-not-a-hosted-sender",
        HOSTED_SENDER,
        False,
        "Jotform <noreply@jotform.com>",
        "New submission",
        "You have a new form submission.",
        link="https://www.jotform.com/inbox",
    ),
]


COLUMNS = ("rule", "expect", "sender", "subject", "text", "link", "dkim", "category")


@pytest.mark.parametrize(COLUMNS, CASES)
def test_check_fires_or_stays_quiet(
    rules, rule, expect, sender, subject, text, link, dkim, category
):
    msg = mail(sender, subject, text, **({"link": link} if link else {}), dkim=dkim)
    assert fired(rules, msg, rule) is expect


# A finding that names where the mail leads (and, where given, the category it makes).
EVIDENCE_CASES = [
    # a lure with no brand claimed, a call to click and a link to a third site
    case(
        "lure-with-a-call-to-click-and-a-third-site-fires",
        LURE_LINK,
        "kq7zt-notice.example.org",
        "Mailbox Admin <admin@kq7zt-mailer.example.net>",
        "Storage",
        "Your mailbox storage is full and new messages are on hold. Click here to release them.",
        category="phishing",
    ),
    case(
        "own-address-in-subject-with-pressure-fires",
        ADDRESS_IN_SUBJECT,
        "me@freelancer.example",
        "Rewards <info@kq7zt-mailer.example.net>",
        "me@freelancer.example, last chance: your reward expires today",
        "Claim your reward before midnight.",
    ),
    case(
        "mailto-to-another-domain-leads-away",
        RULE,
        "parcel-desk.example.org",
        "DHL Express <notice@kq7zt-mailer.example.net>",
        "Delivery",
        "Your parcel is held at customs. Pay the customs fee to release it.",
        link="mailto:release@parcel-desk.example.org?subject=fee",
    ),
]


@pytest.mark.parametrize(COLUMNS, EVIDENCE_CASES)
def test_finding_names_the_evidence(
    rules, rule, expect, sender, subject, text, link, dkim, category
):
    msg = mail(sender, subject, text, **({"link": link} if link else {}), dkim=dkim)
    verdict, hit = finding(rules, msg, rule)
    assert expect in hit.evidence
    if category:
        assert category in verdict.categories


# --- a lure with no brand claimed -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "link"),
    [
        # the same lure words, but the link is the sender's own site
        (
            "Your storage is full. Click here to upgrade your plan.",
            "https://kq7zt-mailer.example.net/plans",
        ),
        # a link to a third site, but no lure: an ordinary newsletter
        ("Click here to read the interview with our designer.", "https://news.example.org/a"),
        # a gift card mentioned with a link: payment talk, judged by the scam category
        (
            "Click here to see the gift card winners of our raffle.",
            "https://raffle.example.org/w",
        ),
    ],
)
def test_lure_link_near_misses(rules, text, link):
    msg = mail("Team <team@kq7zt-mailer.example.net>", "News", text, link=link)
    assert not fired(rules, msg, LURE_LINK)


def test_user_rules_file_adds_a_brand(tmp_path):
    extra = tmp_path / "mine.toml"
    extra.write_text(
        '[brands.acmebank]\nnames = ["acme bank"]\ndomains = ["acmebank.example"]\n'
        'family = "bank"\n',
        encoding="utf-8",
    )
    rules = load_rules([extra])
    lure = "Unusual sign-in activity: verify your account within 24 hours."
    fake = mail("Acme Bank <alerts@kq7zt-mailer.example.net>", "Security", lure)
    real = mail(
        "Acme Bank <alerts@acmebank.example>", "Security", lure, link="https://acmebank.example/"
    )
    assert fired(rules, fake)
    assert not fired(rules, real)
    assert not fired(load_rules(), fake)  # the built-in catalogue does not know it


def test_broken_brand_in_user_rules_is_one_clear_error(tmp_path):
    from guard.policy.model import RulesError

    extra = tmp_path / "mine.toml"
    extra.write_text('[brands.acmebank]\nnames = ["acme bank"]\ndomains = ["not a domain"]\n')
    with pytest.raises(RulesError, match=r"acmebank.*not a domain"):
        load_rules([extra])


def test_mailto_with_a_garbage_host_is_not_named(rules):
    msg = mail(
        "Support <team@kq7zt-mailer.example.net>",
        "Account",
        "Your account has been suspended. Click here to confirm your payment details.",
        link="mailto:x@<b>not a host</b>",
    )
    for f in evaluate(rules, msg).findings:
        assert "not a host" not in f.evidence


def test_call_to_click_in_a_conversation_needs_a_sign_of_deceit(rules):
    text = "Please verify your account on staging works now, click here to log in and check."
    msg = EmailMessage()
    msg["From"] = "Dana Whitfield <dana@whitfield-apps.example>"
    msg["To"] = "me@freelancer.example"
    msg["Subject"] = "Re: staging build"
    msg["In-Reply-To"] = "<build-17@freelancer.example>"
    msg["References"] = "<build-17@freelancer.example>"
    msg.set_content(text)
    msg.add_alternative(
        f'<p>{text}</p><p><a href="https://staging.client-apps.example.org/login">Staging</a></p>',
        subtype="html",
    )
    reply = parse_message(msg.as_bytes())
    assert not fired(rules, reply, LURE_LINK)
    # the same words as a first message (no conversation) are a lure with a link away
    first = mail("Dana Whitfield <dana@whitfield-apps.example>", "Staging", text,
                 link="https://staging.client-apps.example.org/login")  # fmt: skip
    assert fired(rules, first, LURE_LINK)
