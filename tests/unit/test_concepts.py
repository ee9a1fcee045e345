"""Concept lexicons (guard/policy/concepts.toml): per concept and language, a sentence that
must yield the concept and a near miss that must not (another concept's words, or the same
word used innocently).

The cases are data, in ``tests/fixtures/concepts/``: ``concepts.toml`` for the concepts of
off-platform deals, scams and disputes, ``lures.toml`` for the phishing lures (fake bank,
mail-provider, courier, streaming, tax-office, cloud-storage, reward and crypto notices,
whose near misses are mostly the genuine service mail the lure imitates). Sentences are
written there; none is taken from a corpus."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from guard.policy.concepts import find_concepts, load_builtin
from guard.policy.normalize import normalise_info

CASE_DIR = Path(__file__).parents[1] / "fixtures" / "concepts"


def _cases(name: str) -> dict[str, list[tuple[str, str, str]]]:
    """concept -> [(language, must fire, must not fire)] from a case file."""
    doc = tomllib.loads((CASE_DIR / name).read_text(encoding="utf-8"))
    return {concept: [(lang, pos, neg) for lang, pos, neg in rows] for concept, rows in doc.items()}


CASES = _cases("concepts.toml")
LURE_CASES = _cases("lures.toml")
LANGS_REQUIRED = {"en", "es", "pt", "fr", "de", "ru"}
LURE_LANGS_REQUIRED = {"en", "es", "pt", "fr", "de", "nl", "it", "ru", "pl", "tr", "id"}

# Phishing-lure concepts: their cases are in lures.toml (LURE_CASES).
LURE_CONCEPTS = {
    "payment_problem", "storage_full", "delivery_fee", "tax_refund", "reward_claim",
    "crypto_giveaway", "document_share", "click_link",
}  # fmt: skip
LURES = (
    "payment_problem", "storage_full", "delivery_fee", "tax_refund", "reward_claim",
    "crypto_giveaway", "document_share",
)  # fmt: skip


def _params(cases: dict[str, list[tuple[str, str, str]]]) -> list[object]:
    return [
        pytest.param(concept, lang, pos, neg, id=f"{concept}-{lang}-{i}")
        for concept, rows in cases.items()
        for i, (lang, pos, neg) in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def concepts():
    return load_builtin()


def _found(cs, text: str) -> set[str]:
    norm, _ = normalise_info(text)
    return {h.concept for h in find_concepts(cs, norm)}


def _fires_and_near_miss_does_not(cs, concept, lang, positive, near_miss) -> None:
    assert concept in _found(cs, positive), f"{concept} not found in {lang}: {positive!r}"
    assert concept not in _found(cs, near_miss), f"{concept} found in {lang}: {near_miss!r}"


@pytest.mark.parametrize(("concept", "lang", "positive", "near_miss"), _params(CASES))
def test_concept_fires_and_near_miss_does_not(concepts, concept, lang, positive, near_miss):
    _fires_and_near_miss_does_not(concepts, concept, lang, positive, near_miss)


@pytest.mark.parametrize(("concept", "lang", "positive", "near_miss"), _params(LURE_CASES))
def test_lure_fires_and_near_miss_does_not(concepts, concept, lang, positive, near_miss):
    _fires_and_near_miss_does_not(concepts, concept, lang, positive, near_miss)


def _has_languages(cases: dict[str, list[tuple[str, str, str]]], required: set[str]) -> None:
    for concept, rows in cases.items():
        langs = {lang for lang, _, _ in rows}
        assert langs >= required, (concept, required - langs)


def test_every_concept_has_cases_in_six_languages(concepts):
    assert set(CASES) | LURE_CONCEPTS == set(concepts.names)
    _has_languages(CASES, LANGS_REQUIRED)


def test_every_lure_concept_has_cases_in_eleven_languages(concepts):
    assert set(LURE_CASES) <= set(concepts.names)
    _has_languages(LURE_CASES, LURE_LANGS_REQUIRED)


def test_file_compiles_with_descriptions(concepts):
    assert len(concepts.concepts) == 44
    assert all(c.description for c in concepts.concepts)


def test_cyrillic_short_stems_do_not_match_inside_words(concepts):
    # "спор" (dispute) is not "спорт", "иск" (lawsuit) is not "поиск"
    assert "dispute_word" not in _found(concepts, "Сделайте поиск по спортивным товарам.")
    # "крипт" (crypto) is not "скрипт"
    assert "pay_instrument" not in _found(concepts, "Обновите скрипт деплоя.")


_BUSINESS = (
    "Hi Maria, thanks for the kickoff call yesterday. As agreed, milestone 1 covers the "
    "product catalogue, the search page and the checkout flow with Stripe. I have pushed the "
    "first draft to the staging server and shared the link in the Upwork room. Could you "
    "send me the brand colours and the final copy for the about page when you have a moment? "
    "The design review is planned for Thursday at 3 pm, and I will prepare a short summary of "
    "open questions before then. Regarding the shipping rules, the table you sent has two "
    "rows for Canada; I assumed the second one replaces the first. Please let me know if that "
    "is wrong. Our accountant asked for the purchase order number so the invoice can be "
    "matched; it is on the PDF attached to the contract. The mobile layout now passes the "
    "accessibility checks, except for the contrast of the secondary buttons, which I will fix "
    "tomorrow. Next week I would like to start on the admin dashboard: orders, refunds "
    "through the shop's own back office and a CSV export. If the budget needs adjusting for "
    "the export, I can add it as a separate milestone. The logo files you uploaded are a bit "
    "small, so a vector version would help. I will also need read access to the analytics "
    "property to verify the tracking events. Thanks again for the quick feedback on the "
    "wireframes, it saved us a lot of time. Have a good weekend, and talk soon. Best regards, "
    "Daniel. P.S. The staging server restarts every night at 2 am, so the site may be down "
    "for a minute then. Version 2.4.1 of the theme is installed; order 20241115 was a test."
)


def test_ordinary_business_text_yields_no_risky_pairs(concepts):
    text = (_BUSINESS * 2)[:2000]
    assert len(text) == 2000
    found = _found(concepts, text)
    assert not {"ask", "id_document"} <= found
    assert not {"outside", "pay_instrument"} <= found
    assert "id_document" not in found and "credential" not in found


# Genuine service and client mail of the kind the lures imitate: none is a lure.
_GENUINE = [
    "Receipt for your order #10482. Total paid: $24.99 with Visa ending 4242. Shipping fee: "
    "$4.00. Your package was delivered on Monday and left at the front door.",
    "Hi Sam, the milestone payment of $600.00 has been released to your Upwork balance. "
    "You can withdraw it from the Reports page.",
    "You have a new message from Laura about the checkout redesign. Reply in the room.",
    "Congratulations! Your proposal was accepted and the contract has started.",
    "I shared the Figma file with you and uploaded the invoice for March as a PDF. "
    "Let me know if the amount matches the purchase order.",
    "Your storage plan renews on 1 June for 2.99 EUR. No action is needed.",
    "Tu pedido ha sido enviado y llegará el jueves. Puedes seguir el envío en tu cuenta.",
    "Ihre Bestellung wurde versandt. Die Sendung wird am Donnerstag zugestellt.",
]


def test_genuine_service_mail_yields_no_lure(concepts):
    for text in _GENUINE:
        found = _found(concepts, text)
        assert not found & set(LURES), (text[:60], found & set(LURES))
