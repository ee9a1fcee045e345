"""The verdict on one message: segmentation, rules, concepts and learned scores together.

``evaluate`` is what ``check``, ``scan``, ``eval``, tests and benchmarks call:

1. the body is split into new text, quoted history and signature (``segment.py``); in a
   message that is not a reply (no In-Reply-To/References, no "Re:"-style subject) quoted-
   looking text counts as new, so a sender cannot hide a request behind a fake quote mark;
2. the rules and structural checks run on the message with the new text as its body
   (``engine.evaluate``), and the rules run once more on the quoted text and signature,
   whose findings only count as context;
3. concepts are found in the subject and the new text (``concepts.py``) and turned into
   features: a concept alone, or two in one sentence or adjacent ones;
4. the learned scores (``weights.toml``, made by ``make train``) add the features up per
   category (``learned.py``). Every counting category names its findings: the rules that
   fired, with their evidence, and one finding for the concept combinations that carried
   it, whose evidence is the sentence where they occur.

Without a weights file the rule engine's own verdict on the new text is returned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace
from functools import lru_cache

from guard.mail import Message
from guard.policy import concepts as cn
from guard.policy import engine
from guard.policy.learned import FeatureView, Weights, load_weights
from guard.policy.model import CATEGORIES, UNCHECKED_RULE, Finding, Verdict
from guard.policy.rules import RuleSet
from guard.policy.segment import Segments, split
from guard.policy.structural import is_relayed_message, is_trusted_platform_sender

_REPLY_SUBJECT = re.compile(
    r"^\s*(?:re|aw|sv|vs|ref|rif|res|odp|yn|tr|fw|fwd|wg|rv|enc|ответ|от|回复|答复)\s*(?:\[\d+\])?\s*[:：]",
    re.IGNORECASE,
)

# What to do, per category, for the finding that the concept combinations make.
ADVICE: dict[str, str] = {
    "off_platform_payment": (
        "The message proposes paying or being paid outside the platform. Payments outside "
        "escrow lose the platform's payment protection and break its terms. Decline politely "
        "and keep every payment on the platform."
    ),
    "off_platform_contact": (
        "The message moves the conversation off the platform (a messenger, a phone call, a "
        "private address) before or without a contract. That is the usual first step of "
        "scams and off-platform deals: keep talking on the platform."
    ),
    "contact_request": (
        "The message asks for your personal contact details. Keep your personal number, "
        "address and social profiles to yourself; the platform's messages are enough."
    ),
    "personal_data": (
        "The message asks for (or exposes) sensitive personal data: identity documents, "
        "passwords, codes or card and bank details. Never send them by mail or chat."
    ),
    "scam": (
        "The message has the marks of a known fraud (money up front, equipment or fees to "
        "buy, cheques and refunds of the difference, investments, gift cards, account "
        "rental). Do not pay or send anything; report the sender to the platform."
    ),
    "phishing": (
        "The message imitates a trusted sender or carries deceptive links or attachments. "
        "Do not click, log in or open attachments from it; go to the site yourself."
    ),
    "dispute": (
        "The relationship is turning into a dispute (cancellation, refund or chargeback "
        "demands, refusal to pay, review threats). Keep every message and file, answer on "
        "the platform, and export the thread as evidence."
    ),
}


@lru_cache(maxsize=1)
def builtin_concepts() -> cn.ConceptSet:
    return cn.load_builtin()


@lru_cache(maxsize=1)
def builtin_weights() -> Weights:
    return load_weights()


def is_reply(msg: Message) -> bool:
    return bool(msg.in_reply_to or msg.references or _REPLY_SUBJECT.match(msg.subject or ""))


def _split(text: str, reply: bool) -> Segments:
    parts = split(text)
    if reply or not parts.quoted:
        return parts
    # Not a reply: what looks quoted is the sender's own text and counts as new.
    return Segments("\n".join(p for p in (parts.new, parts.quoted) if p), "", parts.signature)


def segments(msg: Message, reply: bool | None = None) -> tuple[Segments, Segments]:
    """The segments of the plain and the HTML text. In a message that is not a reply the
    quoted-looking text counts as new (only the signature is set apart)."""
    reply = is_reply(msg) if reply is None else reply
    text, html = msg.text, msg.html_text
    if text.strip() and not engine.html_says_more(text, html):
        html = ""  # the HTML alternative says nothing else: the engine reads only the plain
    return _split(text, reply), _split(html, reply)


def _context_text(plain: Segments, html: Segments) -> tuple[str, str]:
    quoted = plain.quoted if plain.quoted.strip() else html.quoted
    signature = plain.signature if plain.signature.strip() else html.signature
    return quoted, signature


class _Judged:
    """Everything one message yields before the learned scores are applied."""

    __slots__ = ("concepts", "fields", "new_verdict", "view")

    def __init__(
        self,
        new_verdict: Verdict,
        view: FeatureView,
        fields: dict[str, list[engine._Field]],
        concepts: cn.ConceptSet,
    ) -> None:
        self.new_verdict = new_verdict
        self.view = view
        self.fields = fields
        self.concepts = concepts

    def evidence(self, feature: str) -> tuple[str, str]:
        where, piece, start, end = self.view.concepts[feature]
        fld = self.fields[where][piece]
        # Hits record the sentences they occur in; the evidence shows the terms.
        start, end = cn.locate(self.concepts, feature, fld.norm, fld._ascii, (start, end))
        return where, fld.evidence(start, end)


def _judge(
    rules: RuleSet,
    msg: Message,
    cs: cn.ConceptSet,
    partners: Mapping[str, AbstractSet[str]] | None = None,
) -> _Judged:
    """``partners``: which concept pairs have a learned score (None: every pair counts,
    as training needs)."""
    reply = is_reply(msg)
    plain, html = segments(msg, reply)
    new_msg = msg
    if plain.new != msg.text or html.new != msg.html_text:
        new_msg = replace(msg, text=plain.new, html_text=html.new)
    fields: dict[str, list[engine._Field]] = {}
    relayed = is_relayed_message(rules.structural, msg)
    new_verdict = engine.evaluate(rules, new_msg, fields_out=fields, relayed=relayed)
    view = FeatureView(hand_scores=engine.category_sums(new_verdict.findings))
    for f in new_verdict.findings:
        if f.rule != UNCHECKED_RULE and f.category in CATEGORIES:
            view.rules.setdefault(f.rule, f.category)
    quoted, signature = _context_text(plain, html)
    if quoted.strip():
        view.context.add("ctx:quoted")
    if signature.strip():
        view.context.add("ctx:signature")
    # A relayed message is someone's words, not the platform's notice.
    trusted = not relayed and is_trusted_platform_sender(rules.structural, msg)
    if quoted.strip() or signature.strip():
        # What the rules find in the history and the signature only counts as context.
        view.quoted_categories.update(
            c
            for c in engine.text_categories(rules, f"{quoted}\n{signature}", trusted)
            if c in CATEGORIES
        )
    if msg.is_bulk:
        view.context.add("ctx:bulk")
    if reply:
        view.context.add("ctx:reply")
    if trusted:
        view.context.add("ctx:platform_notice")
    if relayed:
        view.context.add("ctx:relayed")
    for name in ("subject", "body"):
        for piece, fld in enumerate(fields.get(name, ())):
            present = rules.concepts_in(fld.matched) if cs is rules.concepts else None
            hits = cn.find_concepts(cs, fld.norm, fld._ascii, partners, present)
            for feature, (start, end) in cn.concept_pairs(hits).items():
                if feature not in view.concepts:
                    view.concepts[feature] = (name, piece, start, end)
    return _Judged(new_verdict, view, fields, cs)


def feature_view(rules: RuleSet, msg: Message) -> FeatureView:
    """The features of ``msg`` (what ``make train`` fits weights on)."""
    return _judge(rules, msg, rules.concepts or builtin_concepts()).view


def _concept_title(feature: str) -> str:
    return " + ".join(part.replace("_", " ") for part in feature.split("+"))


def evaluate(rules: RuleSet, msg: Message, weights: Weights | None = None) -> Verdict:
    """The verdict on ``msg``: see the module docstring."""
    weights = builtin_weights() if weights is None else weights
    if not weights.active:
        plain, html = segments(msg)
        return engine.evaluate(rules, replace(msg, text=plain.new, html_text=html.new))
    judged = _judge(rules, msg, rules.concepts or builtin_concepts(), weights.partners)
    view = judged.view
    learned = [c for c in CATEGORIES if c in weights.features]
    # Per category, in this order (as FeatureView.values lists them for training): the
    # rules that fired, every concept feature, the context features, a quoted finding.
    totals = dict.fromkeys(learned, 0.0)
    shown: dict[str, list[Finding]] = {c: [] for c in learned}
    text_scale = rules.bulk_factor if "ctx:bulk" in view.context else 1.0
    for f in judged.new_verdict.findings:
        if f.category not in totals or f.rule == UNCHECKED_RULE:
            continue
        score = rules_score(rules, weights, f) * text_scale
        if score <= 0:
            continue
        totals[f.category] += score
        shown[f.category].append(
            replace(f, score=round(score, 2), dampened=False, supporting=False)
        )
    concept_sum = dict.fromkeys(learned, 0.0)
    parts: dict[str, list[tuple[float, str]]] = {c: [] for c in learned}
    for name in view.concepts:
        for category, weight in weights.by_feature.get("concept:" + name, ()):
            score = weight * text_scale
            totals[category] += score
            if score > 0:
                concept_sum[category] += score
                parts[category].append((weight, name))
    for name in sorted(view.context):
        for category, weight in weights.by_feature.get(name, ()):
            totals[category] += weight
    for category in view.quoted_categories:
        if category in totals:
            totals[category] += weights.features[category].get("ctx:quoted_finding", 0.0)
    findings: list[Finding] = []
    per_category: dict[str, float] = {}
    for category in CATEGORIES:
        if category not in totals:
            # Not learned (phishing): the rule engine's own scores and logic decide.
            per_category[category] = view.hand_scores.get(category, 0.0)
            findings.extend(f for f in judged.new_verdict.findings if f.category == category)
            continue
        total = per_category[category] = totals[category]
        found = shown[category]
        if total < rules.levels["low"]:
            # Listed, as the rule engine always did, but they do not make the category.
            findings.extend(found)
            continue
        findings.extend(found)
        if concept_sum[category] > 0:
            # The concept finding: its evidence is where the strongest feature occurs (the
            # first of equals), its description the three strongest.
            best = max(parts[category], key=lambda p: p[0])[1]
            where, evidence = judged.evidence(best)
            top = sorted(parts[category], key=lambda p: -p[0])[:3]
            findings.append(
                Finding(
                    rule=f"concepts.{category}",
                    category=category,
                    score=round(concept_sum[category], 2),
                    where=where,
                    evidence=evidence,
                    explanation=ADVICE[category],
                    description="What the message talks about: "
                    + "; ".join(_concept_title(name) for _, name in top),
                )
            )
    counting = [c for c in CATEGORIES if per_category[c] >= rules.levels["low"]]
    score = round(sum(per_category[c] for c in counting), 2)
    risk = "none"
    for level in ("low", "medium", "high"):
        if counting and score >= rules.levels[level]:
            risk = level
    unchecked = [f for f in judged.new_verdict.findings if f.rule == UNCHECKED_RULE]
    findings.sort(key=lambda f: (-f.score, f.rule))
    findings.extend(unchecked)
    return Verdict(
        risk=risk,
        score=score,
        categories=tuple(counting),
        findings=tuple(findings),
        notes=judged.new_verdict.notes,
        unchecked=judged.new_verdict.unchecked,
    )


def rules_score(rules: RuleSet, weights: Weights, finding: Finding) -> float:
    """A rule's learned score, unless the user's own rules file set one (undamped: bulk
    mail is scaled by the caller)."""
    if finding.rule in rules.user_scores or finding.rule not in weights.rules:
        return finding.score / rules.bulk_factor if finding.dampened else finding.score
    return weights.rules[finding.rule]


# A few lines in several scripts, so that the first states of the set's DFA that real mail
# needs (Latin, accented, Cyrillic, CJK, a link) are built by the warm-up.
_WARM_UP_TEXT = (
    "Hello, thanks for the proposal. Can we talk on WhatsApp and can you pay by bank "
    "transfer outside the platform? Hola, ¿hablamos por Telegram? Olá, pagamento fora da "
    "plataforma. Bonjour, paiement hors plateforme. Привет, оплата напрямую. 微信联系。 "
    "Log in at https://example.com/account to confirm your details."
)


def warm_up(rules: RuleSet, weights: Weights | None = None) -> None:
    """Build now what the first judged message would otherwise build: the RE2 set of
    every atom (compiled, and the first states of its DFA), the concepts and the weights.

    RE2 holds Python's interpreter lock while it builds (close to a second for the set):
    a daemon does this before it has threads that must keep time, such as lease renewal,
    rather than in its first scans, where several of them would stall every thread."""
    rules.atom_set.compile()
    evaluate(rules, Message(subject="Re: the project", text=_WARM_UP_TEXT), weights)
