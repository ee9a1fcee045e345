"""Fuzzy fingerprints: copies of one campaign match, ordinary mail does not."""

from __future__ import annotations

import os
import subprocess
import sys
from string import ascii_lowercase

import pytest

from guard.policy.fingerprint import (
    MAX_CHARS,
    SIMILAR,
    Fingerprint,
    fingerprint,
    normalise,
    similarity,
)

TASK_SCAM = """Remote part-time role - earn daily
Hi Anna,

My name is Sarah Johnson and I am a recruiter at Brightpath Talent. We found your
profile on Upwork and think you are a great fit for a flexible remote position. The job
is simple: you rate products in our online app to boost their visibility for the
merchants. Each set takes about 30 minutes and you can earn $150 to $400 per day. A
small deposit of $50 unlocks your first premium task set and is refunded with your first
commission.

To get started, message our onboarding manager on WhatsApp at +1 (555) 201-4478 or
register at https://brightpath-tasks.example.com/join?ref=A17 and enter code BP-2291.

Best regards,
Sarah Johnson
Senior Recruiter, Brightpath Talent
"""

# The same campaign from another sender: other greeting, names, amounts, links, signature,
# and the lines wrapped at another width.
TASK_SCAM_AGAIN = """Remote part-time role - earn daily
Dear Mr. Oliveira,

My name is Kevin Miller and I am a recruiter at Nova Staffing Group. We found your profile
on Upwork and think you are a great fit for a flexible remote position. The job is
simple: you rate products in our online app to boost their visibility for the merchants.
Each set takes about 45 minutes and you can earn $200 to $650 per day. A small deposit of
$80 unlocks your first premium task set and is refunded with your first commission.

To get started, message our onboarding manager on WhatsApp at +44 7700 900123 or register
at http://nova-jobs.example.net/r/99812 and enter code NV-7730.

Kind regards,
Kevin
HR Coordinator | Nova Staffing Group
kevin.miller@nova-staffing.example.org
"""

INVOICE_PHISH_ES = """Factura pendiente 4471
Hola Juan,

Le informamos de que la factura n.º 4471 por importe de 1.250,00 EUR sigue pendiente de
pago. Para evitar la suspensión del servicio, descargue la factura y confirme sus datos
bancarios en el portal de clientes antes de 48 horas: https://portal-pagos.example.com/f/4471

Si ya ha realizado el pago, ignore este mensaje.

Saludos cordiales,
Departamento de Facturación
"""

INVOICE_PHISH_ES_AGAIN = """Factura pendiente 9020
Estimada María:

Le informamos de que la factura n.º 9020 por importe de 310,40 EUR sigue pendiente de pago.
Para evitar la suspensión del servicio, descargue la factura y confirme sus datos bancarios
en el portal de clientes antes de 24 horas: www.clientes-factura.example.net/9020

Si ya ha realizado el pago, ignore este mensaje.

Atentamente,
Equipo de Cobros
"""

LOGO_REQUEST_BAKERY = """Logo for our bakery
Hi Anna,

I run a small family bakery in Porto and we are finally opening a second shop in the
spring. We would love a new logo that still feels warm and handmade, maybe with a
wheat motif, and works on paper bags and our shop sign. Could you send me your rates
and an idea of how long it would take? Happy to hop on a call next week.

Thanks,
Rui
"""

LOGO_REQUEST_STARTUP = """Logo design for a fintech startup
Hello Anna,

We are a three-person startup building budgeting software for freelancers, and we need
a logo and a small brand kit before our beta launch. We like clean geometric marks and
a dark blue palette; the logo has to work as an app icon too. What would you charge for
a logo with two revision rounds, and when could you start?

Best,
Mira
"""

UPDATE_WEBSITE = """Project update: website redesign
Hi team,

Quick update on the website redesign. The new homepage and the pricing page are done
and deployed to staging. The blog templates still need work: the author pages break on
mobile and the image sizes are wrong. I expect to finish them by Thursday, then we can
start the content migration next week.

Let me know if you spot anything on staging.

Cheers,
Anna
"""

UPDATE_APP = """Weekly update - mobile app
Hello Daniel,

Here is where we are with the mobile app this week. Login with Apple and Google now works
on both platforms, and the push notifications are wired to the new backend. The offline
mode is the risky part: syncing conflicts are not resolved yet, so I would move the beta
by one week. I will send a build to the testers on Monday.

Regards,
Anna
"""


def test_same_campaign_other_greeting_names_amounts_links_signature_is_similar() -> None:
    a, b = fingerprint(TASK_SCAM), fingerprint(TASK_SCAM_AGAIN)
    assert not a.too_short and not b.too_short
    assert similarity(a, b) >= SIMILAR
    assert similarity(a, b) == similarity(b, a)


def test_same_campaign_in_spanish_is_similar() -> None:
    a, b = fingerprint(INVOICE_PHISH_ES), fingerprint(INVOICE_PHISH_ES_AGAIN)
    assert similarity(a, b) >= SIMILAR


def _wrap(paragraph: str, width: int) -> str:
    lines, line = [], ""
    for word in paragraph.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return "\r\n".join([*lines, line])


def test_rewrapped_lines_and_crlf_give_the_same_fingerprint() -> None:
    paragraph = TASK_SCAM.split("\n\n")[1]
    rewrapped = TASK_SCAM.replace(paragraph, _wrap(paragraph, 38))
    assert rewrapped != TASK_SCAM
    assert fingerprint(rewrapped) == fingerprint(TASK_SCAM)


@pytest.mark.parametrize(
    ("first", "second"),
    [(LOGO_REQUEST_BAKERY, LOGO_REQUEST_STARTUP), (UPDATE_WEBSITE, UPDATE_APP)],
    ids=["two-logo-requests", "two-project-updates"],
)
def test_different_work_mails_on_related_topics_are_not_similar(first: str, second: str) -> None:
    assert similarity(fingerprint(first), fingerprint(second)) < SIMILAR


def test_ordinary_mail_is_not_similar_to_the_campaign() -> None:
    scam = fingerprint(TASK_SCAM)
    for text in (LOGO_REQUEST_BAKERY, LOGO_REQUEST_STARTUP, UPDATE_WEBSITE, UPDATE_APP):
        assert similarity(fingerprint(text), scam) < SIMILAR


def test_identical_text_is_fully_similar() -> None:
    assert similarity(fingerprint(UPDATE_APP), fingerprint(UPDATE_APP)) == 1.0


@pytest.mark.parametrize(
    "text", ["thanks!", "Re: logo\nThanks, Anna!", "Ok, see you Monday at 10.", "", "   \n"]
)
def test_short_text_never_matches(text: str) -> None:
    fp = fingerprint(text)
    assert fp.too_short
    assert similarity(fp, fp) == 0.0
    assert similarity(fp, fingerprint(TASK_SCAM)) == 0.0
    assert similarity(fingerprint(TASK_SCAM), fp) == 0.0


def test_short_but_identical_messages_do_not_match() -> None:
    text = "Re: files\nGot the files, thank you, will look tonight."
    assert similarity(fingerprint(text), fingerprint(text)) == 0.0


@pytest.mark.parametrize(
    "greeting",
    [
        "Hi Anna,",
        "Hello there!",
        "Dear Mr. Smith,",
        "Hola Juan,",
        "Estimada María:",
        "Olá Pedro,",
        "Bonjour Madame Dupont,",
        "Sehr geehrte Damen und Herren,",
        "Guten Tag Herr Müller,",
        "Ciao Marco,",
        "Gentile Signora Rossi,",
        "Здравствуйте, Иван!",
        "Добрый день, Ольга,",
    ],
)
def test_greetings_are_dropped(greeting: str) -> None:
    body = "we need the files by the end of the week."
    assert normalise(f"Subject line\n{greeting}\n{body}") == normalise(f"Subject line\n{body}")


@pytest.mark.parametrize(
    "closing",
    [
        "Best regards,\nJohn Smith\nACME Corp",
        "Thanks,\nAnna",
        "Cheers",
        "Saludos cordiales,\nJuan",
        "Atenciosamente,\nPedro Souza",
        "Cordialement,\nMarie",
        "Mit freundlichen Grüßen\nHans Müller",
        "Cordiali saluti,\nMarco Rossi",
        "С уважением,\nИван Петров",
    ],
)
def test_closings_and_the_signature_under_them_are_dropped(closing: str) -> None:
    body = "Subject line\nwe need the files by the end of the week."
    assert normalise(f"{body}\n\n{closing}") == normalise(body)


def test_codes_become_placeholders() -> None:
    words = normalise(
        "Offer\nwrite to jobs.hr@example.org or call +1 (555) 201-4478, pay $1,250.00 on "
        "3/12/2026 at https://x.example.com/a?b=1 or www.example.net, code AB12CD, "
        "see pay.example.com/x."
    )
    assert words == [
        "offer",
        "write",
        "to",
        "ⓔ",
        "or",
        "call",
        "ⓟ",
        "pay",
        "ⓝ",
        "on",
        "ⓝ",
        "at",
        "ⓤ",
        "or",
        "ⓤ",
        "code",
        "ⓝ",
        "see",
        "ⓤ",
    ]


def test_names_inside_sentences_are_reduced_and_case_folded() -> None:
    assert normalise("Update\nYesterday Maria Gonzalez from Apex sent it. It works.") == [
        "update",
        "yesterday",
        "ⓧ",
        "from",
        "ⓧ",
        "sent",
        "it",
        "it",
        "works",
    ]


def test_only_the_head_of_a_long_text_is_read() -> None:
    words = (a + b + c for a in ascii_lowercase for b in ascii_lowercase for c in ascii_lowercase)
    text = " ".join(words)
    assert len(text) > 2 * MAX_CHARS
    fp = fingerprint(text)
    assert fp == fingerprint(text[:MAX_CHARS])
    assert fp.shingles < MAX_CHARS // 4


def test_round_trip_through_text() -> None:
    for text in (TASK_SCAM, UPDATE_APP, "thanks!", ""):
        fp = fingerprint(text)
        s = fp.to_text()
        assert s.isascii() and s.startswith("fp1:") and "\n" not in s
        assert Fingerprint.from_text(s) == fp
    assert len(fingerprint(TASK_SCAM).to_text()) < 400


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "fp1",
        "fp2:10:AAAA",
        "fp1:ten:AAAA",
        "fp1:-3:AAAA",
        "fp1:3:AAA*",
        "fp1:3:AAAAAA",  # not whole 32-bit values
        "fp1:2:AAAAAQ",  # one hash for two shingles
        "fp1:2:AAAAAgAAAAE",  # not ascending
        "fp1:1:AAAAAQ:x",
        "fp1:1:" + "A" * 5000,
    ],
)
def test_malformed_text_is_rejected_with_one_line(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        Fingerprint.from_text(bad)
    message = str(info.value)
    assert message.startswith("fingerprint: ") and "\n" not in message


def test_a_good_string_with_one_hash_parses() -> None:
    assert Fingerprint.from_text("fp1:1:AAAAAQ") == Fingerprint(1, (1,))


@pytest.mark.parametrize("seed", ["1", "2"])
def test_the_same_text_gives_the_same_string_in_another_process(seed: str) -> None:
    code = (
        "import sys\n"
        "from guard.policy.fingerprint import fingerprint\n"
        "sys.stdout.write(fingerprint(sys.stdin.read()).to_text())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=TASK_SCAM,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert done.stdout == fingerprint(TASK_SCAM).to_text()
