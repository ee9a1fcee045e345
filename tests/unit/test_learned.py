"""The learned scores: the shipped file loads, names only what exists, is reproducible,
and the verdict it gives still names its findings and their evidence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guard.mail import Address, Message
from guard.policy import evaluate, load_rules
from guard.policy.judge import builtin_concepts, builtin_weights
from guard.policy.learned import CONTEXT, load_weights

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Address("Dana Whitfield", "dana@whitfield-studio.example")


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def test_shipped_weights_name_only_existing_rules_concepts_and_context(rules):
    weights = builtin_weights()
    assert weights.active, "guard/policy/weights.toml is missing or empty: run make train"
    known_rules = {r.id for r in rules.text_rules} | set(rules.checks)
    assert set(weights.rules) <= known_rules
    concepts = set(builtin_concepts().names)
    context = {*CONTEXT, "ctx:quoted_finding"}
    for category, table in weights.features.items():
        for name in table:
            if name.startswith("concept:"):
                assert set(name[8:].split("+")) <= concepts, (category, name)
            else:
                assert name in context, (category, name)


def test_weights_file_errors_name_the_key():
    with pytest.raises(ValueError, match=r"features\.scam\.x"):
        load_weights('[features.scam]\nx = "a lot"\n')
    with pytest.raises(ValueError, match="unknown category"):
        load_weights("[features.spam]\nx = 1.0\n")


def test_a_risky_request_is_flagged_with_named_findings_and_evidence(rules):
    msg = Message(
        from_=CLIENT,
        subject="next milestone",
        text="Once this milestone is approved let's end the contract here and I'll send the "
        "rest to your PayPal, no point giving the site its 10%.",
    )
    verdict = evaluate(rules, msg)
    assert "off_platform_payment" in verdict.categories
    assert verdict.findings
    for f in verdict.findings:
        assert f.evidence and f.explanation.strip()
    assert any("paypal" in f.evidence.lower() for f in verdict.findings)


def test_the_same_request_only_quoted_in_a_decline_is_not_a_new_risk(rules):
    decline = Message(
        from_=Address("Ana", "ana@work.example"),
        subject="Re: next milestone",
        in_reply_to="<abc@client.example>",
        text=(
            "Hi Dana,\n\nThanks, but I keep every payment on the platform, so the next "
            "milestone stays there as agreed.\n\nBest,\nAna\n\n"
            "On Tue, 4 Mar 2025 at 09:12, Dana <dana@whitfield-studio.example> wrote:\n"
            "> let's end the contract here and I'll send the rest to your PayPal,\n"
            "> no point giving the site its 10%.\n"
        ),
    )
    assert evaluate(rules, decline).risk == "none"


def test_training_is_reproducible(tmp_path):
    pytest.importorskip("scipy")
    corpus = tmp_path / "corpus" / "freelance-dev"
    corpus.mkdir(parents=True)
    rows = ["file,categories,notes"]
    texts = [
        (
            "pay.eml",
            "off_platform_payment",
            "I can pay you via PayPal directly, outside Upwork, to avoid the fee.",
        ),
        (
            "pay2.eml",
            "off_platform_payment",
            "Let's skip the platform fee: bank transfer directly to you.",
        ),
        ("ham.eml", "", "The milestone is funded on Upwork; please start on the homepage."),
        ("ham2.eml", "", "Thanks for the draft, two small changes to the footer please."),
        (
            "chat.eml",
            "off_platform_contact",
            "Add me on WhatsApp +1 555 0100 so we can talk there.",
        ),
    ]
    for name, cats, text in texts:
        (corpus / name).write_text(
            f"From: c@client.example\nTo: f@work.example\nSubject: job\n\n{text}\n",
            encoding="utf-8",
        )
        rows.append(f"{name},{cats},")
    (corpus / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    outs = []
    for n in (1, 2):
        out = tmp_path / f"w{n}.toml"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "training" / "train.py"),
                "--corpus-root",
                str(tmp_path / "corpus"),
                "--out",
                str(out),
                "--no-cv",
                "--jobs",
                "1",
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        outs.append(out.read_text(encoding="utf-8"))
    assert outs[0] == outs[1]
    weights = load_weights(outs[0])
    assert weights.features["off_platform_payment"]


def _mail(text: str, subject: str = "project") -> Message:
    return Message(from_=CLIENT, subject=subject, text=text)


# Clear requests, one per category and several languages: the whole verdict must flag them.
CLEAR_RISKY = [
    (
        "off_platform_payment",
        "I'd rather pay you directly by bank transfer, outside Upwork, so we skip the fees.",
    ),
    (
        "off_platform_payment",
        "Te pago por PayPal fuera de la plataforma, así nos ahorramos la comisión.",
    ),
    ("off_platform_contact", "Add me on WhatsApp +1 415 555 0134 and we continue the chat there."),
    ("off_platform_contact", "Напишите мне в телеграм, там удобнее обсуждать проект."),
    (
        "contact_request",
        "Before I send the offer, what is your personal phone number and home address?",
    ),
    (
        "personal_data",
        "Please send us a scan of your passport and your social security number today.",
    ),
    (
        "scam",
        "We will mail you a check for $3,000: deposit it and send the rest to our "
        "equipment vendor.",
    ),
    (
        "dispute",
        "I am cancelling the contract and I demand a full refund, or I leave you a 1-star review.",
    ),
]
CLEAR_HAM = [
    "The milestone is funded on Upwork. Please start with the homepage and send a draft by Friday.",
    "Thanks for the invoice, payment was released through the platform this morning.",
    "Could you change the footer colour and the heading font size? Otherwise it looks great.",
    "Nos vemos en la llamada del jueves por Upwork para revisar el diseño.",
]


@pytest.mark.parametrize(("category", "text"), CLEAR_RISKY)
def test_clear_requests_are_flagged_in_their_category(rules, category, text):
    verdict = evaluate(rules, _mail(text))
    assert category in verdict.categories, [(f.rule, f.category, f.score) for f in verdict.findings]
    assert verdict.risk != "none"


@pytest.mark.parametrize("text", CLEAR_HAM)
def test_ordinary_project_mail_is_quiet(rules, text):
    verdict = evaluate(rules, _mail(text))
    assert verdict.risk == "none", [(f.rule, f.category, f.score) for f in verdict.findings]


def test_the_rule_and_concept_set_is_compiled_at_the_first_message_only():
    fresh = load_rules()
    assert not fresh.atom_set.compiled  # a poll that judges nothing does not pay for it
    verdict = evaluate(
        fresh,
        Message(
            text="Let's skip the platform fee: I pay you directly through PayPal.",
            from_=Address("Client", "c@client.example"),
            subject="Budget",
        ),
    )
    assert fresh.atom_set.compiled
    assert "off_platform_payment" in verdict.categories
