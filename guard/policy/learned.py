"""Learned scores: how much each finding, concept combination and context counts.

Like SpamAssassin's scores, which a perceptron fits over mass-checked corpora, the numbers
here are not set by hand: ``make train`` (``training/train.py``) fits them on labelled mail
and writes ``weights.toml``, which ships with the package. The engine only reads them.

Per category, a message's score is the sum of
- the learned score of every rule or structural check of that category that fired in the
  new text (a rule's hand-set score in ``rules.toml`` is the prior the fit starts from);
- one score per concept feature found in the new text and the subject: a concept alone
  (``ask``) or two concepts in one sentence or adjacent ones (``ask+id_document``);
- context: the message is bulk mail, a platform's verified notice (or one that relays
  someone's message), a reply; findings that
  occur only in the quoted history or the signature.
A category counts when its sum reaches ``levels.low`` (2.0), exactly where the fitted model
gives the category even odds; the sum over counting categories gives the risk level.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from guard.policy.model import CATEGORIES

# Context features (always present or absent as a whole); names are stable: they are the
# keys in weights.toml.
CONTEXT = (
    "ctx:bulk",
    "ctx:platform_notice",
    "ctx:relayed",
    "ctx:reply",
    "ctx:quoted",
    "ctx:signature",
)


@dataclass(frozen=True, slots=True)
class Weights:
    """Learned scores; empty tables mean "use the hand-set rule scores only"."""

    rules: dict[str, float] = field(default_factory=dict)  # rule/check id -> score
    features: dict[str, dict[str, float]] = field(default_factory=dict)  # category -> name -> score
    source: str = "none"
    # feature name -> ((category, score), ...) for every non-zero score: what scoring a
    # message reads (one dictionary look-up per feature the message has).
    by_feature: dict[str, tuple[tuple[str, float], ...]] = field(
        init=False, repr=False, compare=False
    )

    # concept -> the concepts it forms a pair with that has a non-zero score
    partners: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[tuple[str, float]]] = {}
        for category in CATEGORIES:
            for name, score in self.features.get(category, {}).items():
                if score and not name.startswith("rule:"):
                    index.setdefault(name, []).append((category, score))
        object.__setattr__(self, "by_feature", {k: tuple(v) for k, v in index.items()})
        partners: dict[str, set[str]] = {}
        for key in index:
            if key.startswith("concept:") and "+" in key:
                a, b = key.removeprefix("concept:").split("+", 1)
                partners.setdefault(a, set()).add(b)
                partners.setdefault(b, set()).add(a)
        object.__setattr__(self, "partners", {k: frozenset(v) for k, v in sorted(partners.items())})

    @property
    def active(self) -> bool:
        return bool(self.features)


def parse_weights(doc: dict[str, Any], origin: str) -> Weights:
    rules: dict[str, float] = {}
    for key, value in doc.get("rules", {}).items():
        if not isinstance(value, int | float):
            raise ValueError(f"{origin}: rules.{key}: must be a number")
        rules[str(key)] = float(value)
    features: dict[str, dict[str, float]] = {}
    for category, table in doc.get("features", {}).items():
        if category not in CATEGORIES:
            raise ValueError(f"{origin}: features.{category}: unknown category")
        out: dict[str, float] = {}
        for key, value in table.items():
            if not isinstance(value, int | float):
                raise ValueError(f"{origin}: features.{category}.{key}: must be a number")
            out[str(key)] = float(value)
        features[category] = out
    return Weights(rules=rules, features=features, source=origin)


def load_weights(text: str | None = None) -> Weights:
    """The shipped weights (or ``text``, TOML in the same form)."""
    origin = "weights.toml"
    if text is None:
        path = resources.files("guard.policy").joinpath("weights.toml")
        if not path.is_file():
            return Weights()
        text = path.read_text(encoding="utf-8")
    else:
        origin = "weights"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: {exc}") from None
    return parse_weights(doc, origin)


@dataclass(slots=True)
class FeatureView:
    """What the learned combination looks at in one message (also what training reads).

    ``rules`` are rule/check ids that fired in the new text with their categories;
    ``quoted_categories`` the categories of rules that fired in the quoted history or the
    signature; ``concepts`` concept features with the (field, piece, start, end) of their
    first occurrence in the engine's normalised fields; ``context`` the context features
    that hold.
    """

    rules: dict[str, str] = field(default_factory=dict)
    quoted_categories: set[str] = field(default_factory=set)
    concepts: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    context: set[str] = field(default_factory=set)
    hand_scores: dict[str, float] = field(default_factory=dict)  # the rule engine's own sums

    def values(self, category: str, bulk_factor: float) -> dict[str, float]:
        """Every feature that holds for ``category`` with its value (the training matrix's
        row). Text evidence in bulk mail (newsletters, lists) counts at ``bulk_factor``:
        a digest that quotes warning examples is not the request it quotes."""
        text = bulk_factor if "ctx:bulk" in self.context else 1.0
        out = {f"rule:{r}": text for r, c in self.rules.items() if c == category}
        out.update((f"concept:{n}", text) for n in self.concepts)
        out.update((n, 1.0) for n in sorted(self.context))
        if category in self.quoted_categories:
            out["ctx:quoted_finding"] = 1.0
        return out
