"""A platform's verified notification that relays a client's message is judged on the
client's words: the platform's trust does not shield them, and the structural checks
still trust the platform."""

from __future__ import annotations

import pytest

from guard.mail import Address, AuthResults, Message
from guard.policy import evaluate, load_rules
from guard.policy.judge import feature_view
from guard.policy.structural import is_relayed_message

PASS = AuthResults(spf="pass", dkim="pass", dmarc="pass", dkim_domains=("upwork.com",))
FAIL = AuthResults(spf="fail", dkim="fail", dmarc="fail")
UPWORK = Address("Upwork", "donotreply@upwork.com")

ASK = (
    'You have unread messages about the job "Booking widget"\n\n'
    "Marta K.\n"
    "  Quick idea before we start: let's settle this outside Upwork. I will send the money "
    "straight to your PayPal, so neither of us pays the 10% fee.\n\n"
    "View message: https://www.upwork.com/ab/messages/rooms/room_1\n"
)


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def _msg(subject: str, text: str, auth: AuthResults = PASS) -> Message:
    return Message(from_=UPWORK, subject=subject, text=text, auth=auth)


@pytest.mark.parametrize(
    "subject",
    [
        'New message from Marta K. about "Booking widget"',
        "Nuevo mensaje de Marta K.",
        "Marta K. sent you a message",
        "Neue Nachricht von Marta K.",
    ],
)
def test_a_verified_relay_is_judged_on_the_clients_words(rules, subject):
    msg = _msg(subject, ASK)
    assert is_relayed_message(rules.structural, msg)
    view = feature_view(rules, msg)
    assert "ctx:relayed" in view.context
    assert "ctx:platform_notice" not in view.context
    verdict = evaluate(rules, msg)
    assert "off_platform_payment" in verdict.categories
    assert not any(f.category == "phishing" for f in verdict.findings)


def test_a_relay_that_fails_authentication_is_not_a_platform_relay(rules):
    msg = _msg('New message from Marta K. about "Booking widget"', ASK, FAIL)
    assert not is_relayed_message(rules.structural, msg)
    assert "ctx:relayed" not in feature_view(rules, msg).context


def test_a_platform_notice_of_its_own_is_not_a_relay(rules):
    msg = _msg(
        "Your contract has ended",
        'Your contract "Booking widget" with Marta K. has ended. You can leave feedback '
        "within 14 days. Keep communication and payments on Upwork.",
    )
    assert not is_relayed_message(rules.structural, msg)
    view = feature_view(rules, msg)
    assert "ctx:platform_notice" in view.context
    assert "ctx:relayed" not in view.context
