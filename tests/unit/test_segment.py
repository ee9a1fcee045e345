"""Segmentation: the author's new text, quoted history and signature are told apart."""

from __future__ import annotations

import pytest

from guard.mail import Address, Message
from guard.policy.judge import segments
from guard.policy.segment import split

DECLINE_WITH_QUOTE = """Hi Marco,

Thanks for thinking of me. I keep all work and payment on the platform, so I won't
take payment by bank transfer; happy to continue with the milestone there.

Best regards,
Ana

On Tue, 4 Mar 2025 at 09:12, Marco Bellini <marco@bellini-shop.example> wrote:
> Let's skip the platform fee, I pay you by bank transfer directly.
> Send me your IBAN.
"""


def test_gmail_attribution_and_quote_marks_are_history():
    parts = split(DECLINE_WITH_QUOTE)
    assert "I won't" in parts.new
    assert "IBAN" not in parts.new
    assert "Send me your IBAN" in parts.quoted
    assert parts.quoted.startswith("On Tue")


def test_closing_line_starts_a_short_signature():
    parts = split(DECLINE_WITH_QUOTE)
    assert parts.signature == "Ana"
    assert parts.new.rstrip().endswith("Best regards,")


@pytest.mark.parametrize(
    "attribution",
    [
        "El mar, 4 mar 2025 a las 9:12, Marco <m@x.example> escribió:",
        "Em ter., 4 de mar. de 2025 às 09:12, Marco <m@x.example> escreveu:",
        "Le mar. 4 mars 2025 à 09:12, Marco <m@x.example> a écrit :",
        "Am Di., 4. März 2025 um 09:12 Uhr schrieb Marco <m@x.example>:",
        "вт, 4 мар. 2025 г. в 09:12, Marco <m@x.example> написал:",
        "Il giorno mar 4 mar 2025 alle ore 09:12 Marco <m@x.example> ha scritto:",
    ],
)
def test_attributions_in_other_languages(attribution):
    body = f"Gracias, prefiero seguir en la plataforma.\n\n{attribution}\n> paga por fuera\n"
    parts = split(body)
    assert "paga por fuera" in parts.quoted
    assert "paga" not in parts.new


@pytest.mark.parametrize(
    ("body", "new", "quoted_word"),
    [
        pytest.param(
            "Sounds good.\n\nOn Mon, 3 Feb 2025 at 10:02, Rosa Benedetti\n"
            "<rosa@foto.example> wrote:\n\n> call me on WhatsApp\n",
            "Sounds good.",
            "WhatsApp",
            id="attribution-wrapped-over-two-lines",
        ),
        pytest.param(
            "No problem, I will keep it on Upwork.\n\n"
            "From: Dana Client <dana@client.example>\n"
            "Sent: Monday, March 3, 2025 10:00 AM\n"
            "To: Ana <ana@work.example>\n"
            "Subject: payment\n\n"
            "Can I pay you via PayPal outside Upwork?\n",
            "No problem, I will keep it on Upwork.",
            "PayPal",
            id="outlook-header-block-without-quote-marks",
        ),
        pytest.param(
            "> Can we talk on Telegram?\nNo, let's stay here.\n"
            "> And the budget?\nFine as agreed.\n",
            "No, let's stay here.\nFine as agreed.",
            "Telegram",
            id="inline-reply-keeps-the-authors-answers",
        ),
    ],
)
def test_quoted_history_is_told_apart_from_the_new_text(body, new, quoted_word):
    parts = split(body)
    assert parts.new == new
    assert quoted_word in parts.quoted


def test_forwarded_message_is_history():
    body = (
        "FYI, looks like a scam.\n\n---------- Forwarded message ---------\n"
        "From: x\nBuy the laptop from our vendor.\n"
    )
    parts = split(body)
    assert "vendor" in parts.quoted and "vendor" not in parts.new


def test_sig_delimiter_and_company_signature():
    body = (
        "See the revised flows attached.\n\n-- \nNatalia Ruiz | Marketing\n"
        "WhatsApp Business line: +44 7700 900000\n"
    )
    parts = split(body)
    assert "WhatsApp" in parts.signature
    assert "WhatsApp" not in parts.new


def test_postscript_after_a_closing_stays_new():
    body = "Great, thanks.\n\nCheers,\nSam\nP.S. add me on WhatsApp +1 555 0100\n"
    parts = split(body)
    assert "WhatsApp" in parts.new
    assert parts.signature == ""


def test_a_long_paragraph_after_a_closing_is_not_a_signature():
    body = "Thanks,\n" + "This is a long paragraph of real content that goes on and on. " * 3 + "\n"
    assert split(body).signature == ""


def test_fake_quote_in_a_message_that_is_not_a_reply_counts_as_new():
    text = "Hello\n\nOn Mon, Bob <b@x.example> wrote:\n> pay me by PayPal outside Upwork\n"
    first = Message(text=text, from_=Address("Bob", "b@x.example"), subject="Project")
    plain, _ = segments(first)
    assert "PayPal" in plain.new
    reply = Message(
        text=text, from_=Address("Bob", "b@x.example"), subject="Re: Project", in_reply_to="<a@x>"
    )
    plain, _ = segments(reply)
    assert "PayPal" not in plain.new


def test_segmentation_is_linear_on_hostile_input():
    # 200k lines of '>' and 100k attribution-looking lines: must simply finish.
    body = ("> x\n" * 200_000) + ("On a b c wrote something\n" * 100_000)
    parts = split(body)
    assert parts.quoted.count("> x") == 200_000
