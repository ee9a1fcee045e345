"""What one account's user taught the guard, applied to a verdict.

The user marks a message safe or reports one from the mail client (see issue 15); the
mailbox side records that in the store and hands it here as a :class:`Feedback`:

- **Trusted senders.** A sender the user marked safe for some text categories (asking to be
  paid by PayPal, a WhatsApp line in the signature) keeps being checked, but the findings of
  those categories count at ``TRUSTED_FACTOR`` of their score, and say so. Never phishing
  and never what the headers, links or attachment names show (structural checks, a link to
  a messenger, a file name), and nothing at all when the message fails authentication or is
  itself flagged as phishing: a spoofed or hijacked trusted address must not profit from
  the trust.
- **Reported campaigns.** The fuzzy fingerprint (``fingerprint.py``) of each reported
  message's new text; a later message whose fingerprint is similar (``SIMILAR``) gets one
  finding, ``guard.reported_campaign``, that alone reaches the "medium" level, whoever sent
  it. Not for a platform's own authenticated mail: a reported fake notification must not
  make every real notification "similar".

Re-summing: the verdict of ``judge.evaluate`` adds learned context weights that no finding
shows (a reply, a platform notice, ...), so summing its findings again
(``engine.sum_findings``) would not give its risk back (it gives a higher one for about one
message in seven of the writer corpora). When a score changes, the per-category totals are
therefore rebuilt exactly as the judge built them (:func:`category_totals`, one more pass
of the judge over this message only), changed by what feedback changed, and the risk follows
from them by the engine's rule (a category counts from ``levels.low``; the sum over counting
categories gives the level). Without learned weights the findings are the totals and
:func:`~guard.policy.engine.category_sums` is exact.

Cost: a dictionary look-up for the sender when nothing applies. The message is
fingerprinted only when the account has reported campaigns (1.8 ms per message of
``public/ham``, 8 KB of text on average, against about 29 ms for judging it; see
``benchmarks/feedback_curve.py --fingerprint-cost``); an index from hash to campaigns makes
matching against 300 campaigns cost 0.6 ms more (build the :class:`Feedback` once per
scan: the index is kept for the last few campaign tuples). The judge runs once more on
the message only when a trusted sender's findings are reduced or a campaign matched.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from guard.mail import Message
from guard.policy import engine
from guard.policy.fingerprint import SIMILAR, SKETCH, Fingerprint, fingerprint, similarity
from guard.policy.judge import (
    _REPLY_SUBJECT,
    _judge,
    builtin_concepts,
    builtin_weights,
    rules_score,
    segments,
)
from guard.policy.learned import Weights
from guard.policy.model import CATEGORIES, UNCHECKED_RULE, Finding, Verdict
from guard.policy.rules import RuleSet
from guard.policy.structural import is_trusted_platform_sender

TEXT_CATEGORIES: tuple[str, ...] = (
    "off_platform_payment",
    "off_platform_contact",
    "contact_request",
    "personal_data",
    "scam",
    "dispute",
)
"""The categories a user can mark a sender safe for (never phishing)."""

TRUSTED_FACTOR = 0.3
"""What a trusted sender's text finding counts for, as shown with it. Whatever the factor,
the text findings of a trusted category together stay below ``levels.low`` (the category
does not count): the issue's promise is that a sender marked safe for a kind of request is
not labelled for it again. Structural findings of the category (a chat link, say) still
count in full, and phishing and failed authentication are never reduced."""

CAMPAIGN_RULE = "guard.reported_campaign"
CAMPAIGN_DEFAULT_CATEGORY = "scam"
REDUCED_NOTE = "Counts less: you marked mail from this sender safe. "
CAMPAIGN_EXPLANATION = (
    "You reported a message like this one: this one has nearly the same text, with other "
    "names, greetings, amounts or links, so it is most likely the same campaign sent again, "
    "perhaps from another address. Treat it as you treated the one you reported: do not "
    "reply, pay or open its links, and report it to the platform."
)

# Fields whose findings are about the text the sender wrote (a link's address, a sender
# name and a file name are structural whatever rule found them).
_TEXT_FIELDS = frozenset(("subject", "body", "attachments"))
_FAILED = {
    "dmarc": frozenset(("fail", "quarantine", "reject")),
    "spf": frozenset(("fail", "softfail", "permerror")),
    "dkim": frozenset(("fail", "permerror")),
}


@dataclass(frozen=True)
class ReportedCampaign:
    """One message the user reported, by its fingerprint."""

    fingerprint: Fingerprint
    reported_on: datetime.date
    categories: tuple[str, ...]  # engine categories of the reported message (may be empty)
    feedback_id: int = 0


@dataclass(frozen=True)
class Feedback:
    """What one account's user taught the guard."""

    trusted: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Sender address (casefolded) -> the text categories the user marked safe for it."""
    campaigns: tuple[ReportedCampaign, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.trusted and not self.campaigns


def _strip_reply_prefixes(subject: str) -> str:
    for _ in range(5):  # "Re: Fwd: Re: ..." (bounded)
        m = _REPLY_SUBJECT.match(subject)
        if not m:
            break
        subject = subject[m.end() :]
    return subject.strip()


def message_fingerprint(msg: Message) -> Fingerprint:
    """Fingerprint of what the sender wrote: subject (without "Re:"/"Fwd:") and the new
    body text, as the engine segments it (quoted history, forwarded tails and the
    signature left out; in a message that is not a reply quoted-looking text counts)."""
    plain, html = segments(msg)
    body = plain.new if plain.new.strip() else html.new
    return fingerprint(f"{_strip_reply_prefixes(msg.subject or '')}\n{body}")


def fails_authentication(msg: Message) -> bool:
    """The receiving server found the sender's domain not to have sent this message."""
    auth = msg.auth
    return (
        auth.dmarc in _FAILED["dmarc"] or auth.spf in _FAILED["spf"] or auth.dkim in _FAILED["dkim"]
    )


def best_campaign(
    msg: Message, campaigns: tuple[ReportedCampaign, ...]
) -> tuple[ReportedCampaign, float] | None:
    """The reported campaign most similar to ``msg`` (at least ``SIMILAR``), if any; the
    first reported of equals."""
    if not campaigns:
        return None
    fp = message_fingerprint(msg)
    if fp.too_short:
        return None
    mine = frozenset(fp.mins)
    # similarity() counts the shared hashes among the SKETCH smallest of the union: it is
    # at most shared / min(SKETCH, union). An index from hash to campaigns counts the shared
    # hashes of every campaign at once; only those that could reach SIMILAR are compared.
    shared: dict[int, int] = {}
    for h in mine:
        for i in _index(campaigns).get(h, ()):
            shared[i] = shared.get(i, 0) + 1
    best: tuple[ReportedCampaign, float] | None = None
    for i in sorted(shared):
        other = campaigns[i].fingerprint
        n = shared[i]
        if n < SIMILAR * min(SKETCH, len(mine) + len(other.mins) - n):
            continue
        s = similarity(fp, other)
        if s >= SIMILAR and (best is None or s > best[1]):
            best = (campaigns[i], s)
    return best


# The hash index of the last few campaign tuples (by identity; the tuple is kept, so its id
# is not reused while cached): a Feedback built once per scan is indexed once.
_INDEXES: dict[int, tuple[tuple[ReportedCampaign, ...], dict[int, list[int]]]] = {}


def _index(campaigns: tuple[ReportedCampaign, ...]) -> dict[int, list[int]]:
    cached = _INDEXES.get(id(campaigns))
    if cached is not None and cached[0] is campaigns:
        return cached[1]
    index: dict[int, list[int]] = {}
    for i, campaign in enumerate(campaigns):
        if not campaign.fingerprint.too_short:
            for h in campaign.fingerprint.mins:
                index.setdefault(h, []).append(i)
    if len(_INDEXES) >= 4:
        _INDEXES.clear()
    _INDEXES[id(campaigns)] = (campaigns, index)
    return index


def _trusted_categories(rules: RuleSet, verdict: Verdict, msg: Message, fb: Feedback) -> set[str]:
    """The text categories whose findings count less in this message ({} when none)."""
    if not fb.trusted or msg.from_ is None or not msg.from_.addr:
        return set()
    marked = fb.trusted.get(msg.from_.addr.casefold())
    if not marked:
        return set()
    if fails_authentication(msg) or "phishing" in verdict.categories:
        return set()
    return {c for c in marked if c in TEXT_CATEGORIES}


def _reducible(rules: RuleSet, f: Finding, categories: set[str]) -> bool:
    if f.category not in categories or f.where not in _TEXT_FIELDS or f.score <= 0:
        return False
    return f.rule == f"concepts.{f.category}" or f.rule in _text_rule_ids(rules)


_TEXT_RULE_IDS: dict[int, frozenset[str]] = {}


def _text_rule_ids(rules: RuleSet) -> frozenset[str]:
    ids = _TEXT_RULE_IDS.get(id(rules))
    if ids is None or len(_TEXT_RULE_IDS) > 8:
        _TEXT_RULE_IDS.clear()
        ids = _TEXT_RULE_IDS[id(rules)] = frozenset(r.id for r in rules.text_rules) - frozenset(
            rules.checks
        )
    return ids


def category_totals(
    rules: RuleSet, msg: Message, verdict: Verdict, weights: Weights | None = None
) -> dict[str, float]:
    """Per category, the total ``judge.evaluate`` gave ``msg`` (``verdict`` is its verdict,
    possibly with findings the scan added, which are added here too)."""
    weights = builtin_weights() if weights is None else weights
    if not weights.active:
        return engine.category_sums(verdict.findings)
    judged = _judge(rules, msg, rules.concepts or builtin_concepts(), weights.partners)
    view = judged.view
    text_scale = rules.bulk_factor if "ctx:bulk" in view.context else 1.0
    totals = {c: view.hand_scores.get(c, 0.0) for c in CATEGORIES if c not in weights.features}
    learned = dict.fromkeys((c for c in CATEGORIES if c in weights.features), 0.0)
    for f in judged.new_verdict.findings:
        if f.category in learned and f.rule != UNCHECKED_RULE:
            score = rules_score(rules, weights, f) * text_scale
            if score > 0:
                learned[f.category] += score
    for name in view.concepts:
        for category, weight in weights.by_feature.get("concept:" + name, ()):
            learned[category] += weight * text_scale
    for name in sorted(view.context):
        for category, weight in weights.by_feature.get(name, ()):
            learned[category] += weight
    for category in view.quoted_categories:
        if category in learned:
            learned[category] += weights.features[category].get("ctx:quoted_finding", 0.0)
    totals.update(learned)
    # Findings the scan added after judging (a reused Message-ID, an earlier feedback pass).
    known = {f.rule for f in judged.new_verdict.findings}
    extra = [
        f
        for f in verdict.findings
        if f.rule not in known and f.rule != UNCHECKED_RULE and not f.rule.startswith("concepts.")
    ]
    for category, score in engine.category_sums(extra).items():
        if category in totals:
            totals[category] += score
    return totals


def _campaign_finding(rules: RuleSet, campaign: ReportedCampaign, sim: float) -> Finding:
    category = next((c for c in campaign.categories if c in CATEGORIES), CAMPAIGN_DEFAULT_CATEGORY)
    return Finding(
        rule=CAMPAIGN_RULE,
        category=category,
        score=rules.levels["medium"],
        where="body",
        evidence=(
            f"similar to a message you reported on {campaign.reported_on.isoformat()} "
            f"({round(sim * 100)} %)"
        ),
        explanation=CAMPAIGN_EXPLANATION,
        description="Similar to a message you reported",
    )


def apply_feedback(
    rules: RuleSet,
    verdict: Verdict,
    msg: Message,
    feedback: Feedback,
    weights: Weights | None = None,
) -> Verdict:
    """The verdict adjusted by the account's feedback (the same object when nothing
    applies, always when ``feedback.empty``). ``weights``: those ``verdict`` was judged
    with (default: the shipped ones)."""
    if feedback.empty:
        return verdict
    trusted = _trusted_categories(rules, verdict, msg, feedback)
    reduced: dict[int, Finding] = {}
    for i, f in enumerate(verdict.findings):
        if trusted and _reducible(rules, f, trusted):
            reduced[i] = replace(
                f,
                score=round(f.score * TRUSTED_FACTOR, 2),
                explanation=REDUCED_NOTE + f.explanation,
            )
    campaign: Finding | None = None
    if (
        feedback.campaigns
        and not any(f.rule == CAMPAIGN_RULE for f in verdict.findings)
        and not is_trusted_platform_sender(rules.structural, msg)
    ):
        match = best_campaign(msg, feedback.campaigns)
        if match is not None:
            campaign = _campaign_finding(rules, *match)
    if not reduced and campaign is None:
        return verdict
    findings = [reduced.get(i, f) for i, f in enumerate(verdict.findings)]
    if campaign is not None:
        findings.append(campaign)
    weights = builtin_weights() if weights is None else weights
    if not weights.active:
        totals = engine.category_sums(findings)
    else:
        totals = category_totals(rules, msg, verdict, weights)
        for i, f in reduced.items():
            totals[f.category] -= verdict.findings[i].score - f.score
        if campaign is not None:
            c = campaign.category
            totals[c] = max(totals.get(c, 0.0), 0.0) + campaign.score
    # What the sender writes of a kind the user marked safe never makes that category
    # count on its own, however much of it there is: only what is not reducible (a link's
    # structure, say) can lift the category to "low" and beyond.
    ceiling = rules.levels["low"] - 0.01
    for c in {f.category for f in reduced.values()}:
        other = sum(f.score for i, f in enumerate(findings) if f.category == c and i not in reduced)
        totals[c] = min(totals.get(c, 0.0), ceiling + other)
    return _summed(rules, verdict, findings, totals)


def _summed(
    rules: RuleSet, verdict: Verdict, findings: list[Finding], totals: Mapping[str, float]
) -> Verdict:
    """The verdict of ``findings`` with per-category ``totals``, by the engine's rule."""
    counting = [c for c in CATEGORIES if totals.get(c, 0.0) >= rules.levels["low"]]
    score = round(sum(totals[c] for c in counting), 2)
    risk = "none"
    for level in ("low", "medium", "high"):
        if counting and score >= rules.levels[level]:
            risk = level
    unchecked = [f for f in findings if f.rule == UNCHECKED_RULE]
    ordered = sorted(
        (f for f in findings if f.rule != UNCHECKED_RULE), key=lambda f: (-f.score, f.rule)
    )
    return Verdict(
        risk=risk,
        score=score,
        categories=tuple(counting),
        findings=(*ordered, *unchecked),
        notes=verdict.notes,
        unchecked=verdict.unchecked,
    )
