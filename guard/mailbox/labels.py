"""The label vocabulary: what a thread of a given risk and categories is labelled with.

One logical label (``Label``) has three spellings, one per backend (each written by its
class in ``label_backends``):
- a Gmail label / label-folder path: ``Guard/Off-platform payment`` (the folder uses the
  server's hierarchy delimiter instead of ``/``);
- an IMAP keyword: ``$GuardOffPlatformPayment``, except phishing, which uses the registered
  ``$Phishing`` keyword (RFC 9051 / IANA IMAP keyword registry) so that clients which
  already understand it show their own warning.

Besides the thread labels there is one message label, ``Guard/Unchecked``
(``$GuardUnchecked``): the guard could not read that message whole (a limit cut it, it
had too many parts, its parse failed or ran out of time, the store refused it). It goes on
that message alone, whatever its risk and ``policy.min_risk``, and is never spread to the
thread: the rest of the thread was read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from guard.policy.model import CATEGORIES, LEVELS, UNCHECKED_CATEGORY, level_at_least

CATEGORY_TITLES: dict[str, str] = {
    "off_platform_payment": "Off-platform payment",
    "off_platform_contact": "Off-platform contact",
    "contact_request": "Contact request",
    "personal_data": "Personal data",
    "scam": "Scam",
    "phishing": "Phishing",
    "dispute": "Dispute",
}
LEVEL_TITLES: dict[str, str] = {"low": "Low risk", "medium": "Medium risk", "high": "High risk"}

_KEYWORD_SAFE = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True, order=True)
class Label:
    """A logical label: ``name`` is a category id or ``level:<risk>``."""

    name: str
    title: str

    def path(self, prefix: str, delimiter: str = "/") -> str:
        return f"{prefix}{delimiter}{self.title}"

    def keyword(self, prefix: str) -> str:
        if self.name == "phishing":
            return "$Phishing"
        camel = "".join(w[:1].upper() + w[1:] for w in re.split(r"[\s_-]+", self.title) if w)
        return "$" + _KEYWORD_SAFE.sub("", prefix) + _KEYWORD_SAFE.sub("", camel)


def category_label(category: str) -> Label:
    return Label(category, CATEGORY_TITLES[category])


def level_label(risk: str) -> Label:
    return Label(f"level:{risk}", LEVEL_TITLES[risk])


UNCHECKED_LABEL = Label(UNCHECKED_CATEGORY, "Unchecked")
REPORTED_LABEL = Label("reported", "Reported")
"""A thread the user reported (moved to Guard/Report): kept until the report is forgotten."""

THREAD_LABELS: tuple[Label, ...] = (
    *(category_label(c) for c in CATEGORIES),
    *(level_label(r) for r in LEVELS[1:]),
    REPORTED_LABEL,
)
# Every label the guard may write: the thread labels and the unchecked message label.
ALL_LABELS: tuple[Label, ...] = (*THREAD_LABELS, UNCHECKED_LABEL)


def thread_labels(
    messages: Iterable[tuple[str, Iterable[str]]],
    min_risk: str,
    safe: Iterable[str] = (),
    reported: bool = False,
) -> tuple[str, frozenset[Label]]:
    """The risk of a thread and the labels every message in it gets.

    ``messages`` gives (risk, categories) per message. A thread is as risky as its
    riskiest message; only messages at or above ``min_risk`` contribute categories, so a
    low-scoring aside in an otherwise flagged thread does not add a misleading label.

    What the user taught counts first: categories marked ``safe`` are left out (a message
    flagged only for them counts as harmless), and a ``reported`` thread is labelled
    Reported and with every category its messages were found to have, whatever their risk.
    """
    safe_set = frozenset(safe)
    risk = "none"
    cats: set[str] = set()
    found: set[str] = set()
    for msg_risk, msg_cats in messages:
        listed = list(msg_cats)
        msg_cats = [c for c in listed if c not in safe_set]
        if listed and not msg_cats:
            msg_risk = "none"  # flagged only for what the user said is fine
        found.update(c for c in msg_cats if c in CATEGORY_TITLES)
        if LEVELS.index(msg_risk) > LEVELS.index(risk):
            risk = msg_risk
        if msg_risk != "none" and level_at_least(msg_risk, min_risk):
            cats.update(c for c in msg_cats if c in CATEGORY_TITLES)
    extra = {REPORTED_LABEL, *(category_label(c) for c in found)} if reported else set()
    if risk == "none" or not level_at_least(risk, min_risk):
        return risk, frozenset(extra)
    return risk, frozenset({level_label(risk), *(category_label(c) for c in cats), *extra})
