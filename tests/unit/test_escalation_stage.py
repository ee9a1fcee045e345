"""Where a thread stands on the escalation ladder, from its messages in date order."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from guard import store as st
from guard.reports import escalation as esc

T0 = datetime(2026, 11, 2, 9, 0)


def rows(*steps: str) -> list[st.StoredMessage]:
    """``req`` a client's off-platform request, ``low`` one below min_risk, ``work`` a
    harmless client message; ``no`` / ``yes`` / ``ok`` the freelancer's decline,
    agreement, plain reply."""
    out = []
    for i, step in enumerate(steps):
        received = step in ("req", "low", "work")
        out.append(
            st.StoredMessage(
                id=i + 1,
                account="a",
                folder="INBOX" if received else "Sent",
                uidvalidity=1,
                uid=i + 1,
                direction="in" if received else "out",
                content_hash=str(i),
                thread_id="t",
                date=T0 + timedelta(hours=i),
                risk={"req": "high", "low": "low"}.get(step, "none"),
                categories="off_platform_payment" if step in ("req", "low") else "",
                stance={"no": "decline", "yes": "agree"}.get(step, ""),
            )
        )
    return out


@pytest.mark.parametrize(
    ("steps", "stage", "rung"),
    [
        ((), "", 0),
        (("work", "ok"), "", 0),
        (("req",), "asked", 1),
        (("req", "req"), "asked", 1),  # asked twice, never answered: still the first rung
        (("req", "ok"), "asked", 1),  # a reply about the work is not a decline
        (("req", "no"), "declined", 0),
        (("req", "no", "req"), "asked_again", 2),
        (("req", "no", "no", "req"), "asked_again", 2),  # one refusal said twice
        (("req", "no", "req", "no"), "declined_twice", 0),
        (("req", "no", "req", "no", "req"), "insists", 3),
        (("req", "no", "req", "no", "req", "no", "req"), "insists", 3),  # stays at the top
        (("req", "yes"), "agreed", 0),
        (("req", "no", "req", "yes", "req"), "agreed", 0),
        (("low", "no", "low"), "", 0),  # below min_risk: not a request
        (("no", "req"), "asked", 1),  # a refusal before any request refuses nothing
    ],
)
def test_stage_and_rung(steps: tuple[str, ...], stage: str, rung: int) -> None:
    found = esc.thread_stage(rows(*steps), "medium")
    assert (found.name, found.rung) == (stage, rung)


def test_date_order_not_arrival_order() -> None:
    ladder = rows("req", "no", "req")
    found = esc.thread_stage(list(reversed(ladder)), "medium")
    assert found.name == "asked_again"
    assert [r.id for r in found.requests] == [1, 3] and [r.id for r in found.answers] == [2]


def test_the_report_says_who_what_and_when_with_the_bundle() -> None:
    ladder = rows("req", "no", "req", "no", "req")
    for r in ladder:
        r.sender, r.sender_name = "rosa@cliente.example", "Rosa \x1b[31mVidal"
    stage = esc.thread_stage(ladder, "medium")
    thread = st.Thread(account="a", thread_id="t", subject="Logo")
    quotes = {1: ["pay you directly through PayPal"], 2: ["I keep payment on the platform"]}
    text = esc.report_text(
        stage, thread, quotes, platform="Upwork", bundle="r.zip", bundle_sha256="ab" * 32
    )
    assert "Client: Rosa Vidal <rosa@cliente.example>" in text  # escape sequence gone
    assert "Asked 3 time(s); I declined 2 time(s)." in text
    assert '- 2026-11-02 09:00 UTC: "pay you directly through PayPal"' in text
    assert '- 2026-11-02 10:00 UTC: declined: "I keep payment on the platform"' in text
    assert "r.zip" in text and "ab" * 32 in text


@pytest.mark.parametrize(
    ("language", "ask", "reply"),
    [
        (
            "en",
            "Can I pay you directly by PayPal to avoid the Upwork fees?",
            "Thanks, see you Monday.",
        ),
        (
            "es",
            "¿Te puedo pagar directamente por PayPal para evitar la comisión de Upwork?",
            "Gracias, nos vemos el lunes.",
        ),
        (
            "pt",
            "Posso te pagar direto pelo PayPal para evitar a taxa do Upwork?",
            "Obrigado, até segunda.",
        ),
        (
            "fr",
            "Je peux te payer directement par PayPal pour éviter les frais d'Upwork ?",
            "Merci, à lundi.",
        ),
        (
            "de",
            "Kann ich dich direkt per PayPal bezahlen, um die Upwork-Gebühren zu sparen?",
            "Danke, bis Montag.",
        ),
        (
            "ru",
            "Могу заплатить напрямую через PayPal, чтобы не платить комиссию Upwork?",
            "Спасибо, до понедельника.",
        ),
    ],
)
def test_a_reply_that_only_quotes_the_request_is_not_a_new_request(
    language: str, ask: str, reply: str
) -> None:
    """The engine judges what a reply itself says: the client's later reply that quotes
    their earlier request under a harmless line asks for nothing new."""
    from support.mail import make

    from guard.mail import parse_message
    from guard.policy import evaluate, load_rules

    rules = load_rules()
    asked = evaluate(rules, parse_message(make(body=ask)[0]))
    assert "off_platform_payment" in asked.categories, language
    quoted = reply + "\n\nOn Mon, 2 Nov 2026 at 09:00, Rosa wrote:\n> " + ask + "\n"
    raw, _ = make(body=quoted, subject="Re: Logo", reply_to_msg="<ask@cliente.example>")
    again = evaluate(rules, parse_message(raw))
    assert "off_platform_payment" not in again.categories, language
