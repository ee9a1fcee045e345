"""Issue 13: a well-known sender claimed by someone else, together with a lure, is phishing;
the same brand's genuine mail, or a brand merely mentioned, is not.

Per brand family a lure that must fire and the genuine notice from the brand's own domain
that must not; per lure language a courier/bank/mail lure that must fire."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from guard.mail.message import parse_message
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


def fired(rules, msg) -> bool:
    return any(f.rule == RULE for f in evaluate(rules, msg).findings)


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
    verdict = evaluate(rules, msg)
    hit = next(f for f in verdict.findings if f.rule == RULE)
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


def test_display_name_with_a_link_to_a_third_site_fires(rules):
    msg = mail(
        "DHL Express <news@kq7zt-mailer.example.net>",
        "Our opening hours",
        "Our shop is closed on Monday.",
        link="https://kq7zt-track.example.org/id",
    )
    assert fired(rules, msg)


def test_brand_in_display_name_alone_is_not_enough(rules):
    # a shop newsletter named after its courier partner, no lure and no third site
    msg = mail(
        "DHL Express <news@kq7zt-mailer.example.net>",
        "Our opening hours",
        "Our shop is closed on Monday.",
        link="https://kq7zt-mailer.example.net/hours",
    )
    assert not fired(rules, msg)


def test_colleague_mentioning_a_bank_is_quiet(rules):
    msg = mail(
        "Ana Ribeiro <ana@ribeiro-studio.example>",
        "Invoice for March",
        "I paid the March invoice from my Barclays account this morning, it should arrive "
        "tomorrow. Thanks for the quick delivery!",
        link="https://ribeiro-studio.example/portfolio",
    )
    assert not fired(rules, msg)


def test_generic_brand_name_as_a_person_is_quiet(rules):
    # "Chase" is a first name as well as a bank: a person's full name is not the bank
    msg = mail(
        "Chase Miller <chase.miller@kq7zt-mailer.example.net>",
        "Please verify",
        "Please verify your account details on the staging server within 24 hours.",
    )
    assert not fired(rules, msg)


def test_dkim_signature_of_the_brand_counts_as_genuine(rules):
    # sent through a mail service, signed by the brand's own domain
    msg = mail(
        "Netflix <info@esp-sender.example.net>",
        "Payment problem",
        "We couldn't process your payment. Update your payment method.",
        dkim="netflix.com",
    )
    assert not fired(rules, msg)


def test_small_capitals_display_name_fires(rules):
    msg = mail(
        "ᴅʜʟ ᴇxᴘʀᴇss <notice@kq7zt-mailer.example.net>",
        "Delivery",
        "Your parcel is waiting: pay the redelivery fee to schedule a new delivery.",
    )
    assert fired(rules, msg)


def test_claim_in_subject_needs_lure_and_link_away(rules):
    lure = "Your parcel is held: pay the customs fee to release your package."
    away = mail("Service <info@kq7zt-mailer.example.net>", "DHL: delivery notice", lure)
    assert fired(rules, away)
    # no lure: a shop's shipping confirmation naming its courier
    plain = mail(
        "Orders <orders@kq7zt-mailer.example.net>",
        "Shipped with DHL",
        "Your order has shipped and will arrive on Thursday.",
    )
    assert not fired(rules, plain)


def test_known_brand_naming_another_brand_is_quiet(rules):
    # a streaming service's genuine notice that names the card network
    msg = mail(
        "Spotify <no-reply@spotify.com>",
        "Visa card payment problem",
        "We couldn't process your payment with your Visa card. Update your payment method.",
        link="https://www.spotify.com/account",
    )
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


# --- a lure with no brand claimed -------------------------------------------------------


def test_lure_with_a_call_to_click_and_a_third_site_fires(rules):
    msg = mail(
        "Mailbox Admin <admin@kq7zt-mailer.example.net>",
        "Storage",
        "Your mailbox storage is full and new messages are on hold. Click here to release them.",
    )
    verdict = evaluate(rules, msg)
    hit = next(f for f in verdict.findings if f.rule == "phishing.lure-link")
    assert "phishing" in verdict.categories
    assert "kq7zt-notice.example.org" in hit.evidence


def test_lure_from_free_hosting_address_fires(rules):
    msg = mail(
        "Rewards <noreply@spin-4411.firebaseapp.com>",
        "Your reward",
        "Congratulations, you have been selected: claim your reward now.",
        link="https://spin-4411.firebaseapp.com/claim",
    )
    assert any(f.rule == "phishing.lure-link" for f in evaluate(rules, msg).findings)


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
    assert not any(f.rule == "phishing.lure-link" for f in evaluate(rules, msg).findings)


def test_lure_with_third_site_and_a_shortener_fires_without_call_to_click(rules):
    msg = mail(
        "Support <team@kq7zt-mailer.example.net>",
        "Account",
        "Your account has been suspended until you confirm your payment details.",
        link="https://bit.ly/3xYzAbc",
    )
    assert any(f.rule == "phishing.lure-link" for f in evaluate(rules, msg).findings)


def test_lure_with_third_site_alone_is_not_enough(rules):
    # a lure-like sentence and a link elsewhere, nothing else deceitful: not flagged
    msg = mail(
        "Support <team@kq7zt-mailer.example.net>",
        "Account",
        "Your account has been suspended until you confirm your payment details.",
    )
    assert not any(f.rule == "phishing.lure-link" for f in evaluate(rules, msg).findings)


def test_own_address_in_subject_with_pressure_fires(rules):
    msg = mail(
        "Rewards <info@kq7zt-mailer.example.net>",
        "me@freelancer.example, last chance: your reward expires today",
        "Claim your reward before midnight.",
    )
    verdict = evaluate(rules, msg)
    hit = next(f for f in verdict.findings if f.rule == "phishing.address-in-subject")
    assert "me@freelancer.example" in hit.evidence


def test_own_address_in_subject_without_pressure_is_quiet(rules):
    # a service confirming which address was added to a shared folder
    msg = mail(
        "Files <files@kq7zt-mailer.example.net>",
        "me@freelancer.example was added to the project folder",
        "You can now see the project folder.",
        link="https://kq7zt-mailer.example.net/folder",
    )
    assert not any(f.rule == "phishing.address-in-subject" for f in evaluate(rules, msg).findings)


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


def test_sender_on_free_hosting_subdomain_fires(rules):
    msg = mail(
        "Rewards Team <noreply@spin-4411.firebaseapp.com>",
        "Hello",
        "Have a look at our new collection.",
        link="https://spin-4411.firebaseapp.com/",
    )
    assert any(f.rule == "phishing.hosted-sender" for f in evaluate(rules, msg).findings)


def test_form_service_own_notice_is_not_a_hosted_sender(rules):
    # a form builder's own notification (its apex domain) is its mail, not a hosted site
    msg = mail(
        "Jotform <noreply@jotform.com>",
        "New submission",
        "You have a new form submission.",
        link="https://www.jotform.com/inbox",
    )
    assert not any(f.rule == "phishing.hosted-sender" for f in evaluate(rules, msg).findings)


def test_mailto_to_another_domain_leads_away(rules):
    msg = mail(
        "DHL Express <notice@kq7zt-mailer.example.net>",
        "Delivery",
        "Your parcel is held at customs. Pay the customs fee to release it.",
        link="mailto:release@parcel-desk.example.org?subject=fee",
    )
    hit = next(f for f in evaluate(rules, msg).findings if f.rule == RULE)
    assert "parcel-desk.example.org" in hit.evidence


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
    assert not any(f.rule == "phishing.lure-link" for f in evaluate(rules, reply).findings)
    # the same words as a first message (no conversation) are a lure with a link away
    first = mail("Dana Whitfield <dana@whitfield-apps.example>", "Staging", text,
                 link="https://staging.client-apps.example.org/login")  # fmt: skip
    assert any(f.rule == "phishing.lure-link" for f in evaluate(rules, first).findings)
