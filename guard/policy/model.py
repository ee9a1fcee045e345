"""Plain data the policy engine returns: findings and the verdict they add up to; and
:class:`RulesError`, with :func:`read_toml`, the one way a rules or brands file is read."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import GuardError, Kind

CATEGORIES: tuple[str, ...] = (
    "off_platform_payment",
    "off_platform_contact",
    "contact_request",
    "personal_data",
    "scam",
    "phishing",
    "dispute",
)
LEVELS: tuple[str, ...] = ("none", "low", "medium", "high")

# A message the guard could not read whole (text cut by a limit, too many parts, a parse
# that failed or ran out of time, a row the store refused) is judged on what was read and
# also marked "unchecked": a finding of this rule and category (score 0, never counted in
# ``Verdict.categories``), the label ``Guard/Unchecked`` and a line in the digest.
UNCHECKED_RULE = "guard.unchecked"
UNCHECKED_CATEGORY = "unchecked"
UNCHECKED_EXPLANATION = (
    "Part of this message could not be read whole, so the guard judged only what it could "
    "read. Read it with care before you act on it, and do not open its links or "
    "attachments unless you know the sender."
)


class RulesError(GuardError, ValueError):
    """A rules file is unreadable or invalid; the message names the file and the key."""

    kind = Kind.RULES


def read_toml(kind: str, path: Path | None, text: str | None = None) -> dict[str, Any]:
    """A ``kind`` ("rules", "brands") TOML file, or its built-in ``text``; any failure is a
    :class:`RulesError` naming the file."""
    name = str(path) if path else f"built-in {kind}"
    try:
        if text is None:
            assert path is not None
            text = path.read_text(encoding="utf-8")
        return tomllib.loads(text)
    except OSError as exc:
        raise RulesError(f"{kind} file '{name}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RulesError(f"{kind} file '{name}': not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{kind} file '{name}': {exc}") from None


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that fired, with the original text that made it fire."""

    rule: str
    category: str
    score: float
    where: str
    evidence: str
    explanation: str
    description: str = ""
    dampened: bool = False  # found in bulk mail: counts at a reduced, non-cumulative score
    supporting: bool = False  # only counts when some other finding does

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "category": self.category,
            "score": self.score,
            "where": self.where,
            "evidence": self.evidence,
            "explanation": self.explanation,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's answer for one message."""

    risk: str
    score: float
    categories: tuple[str, ...]
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()  # why the message could not be read whole, if it could not

    def to_dict(self) -> dict[str, Any]:
        return {
            "risk": self.risk,
            "score": self.score,
            "categories": list(self.categories),
            "findings": [f.to_dict() for f in self.findings],
        }


def level_at_least(risk: str, minimum: str) -> bool:
    """True when ``risk`` is the same as or above ``minimum`` (both from LEVELS)."""
    return LEVELS.index(risk) >= LEVELS.index(minimum)


def unchecked_finding(reasons: tuple[str, ...] | list[str]) -> Finding:
    """The finding that marks a message as not read whole; ``reasons`` are short lines."""
    return Finding(
        rule=UNCHECKED_RULE,
        category=UNCHECKED_CATEGORY,
        score=0.0,
        where="message",
        evidence="; ".join(reasons)[:240],
        explanation=UNCHECKED_EXPLANATION,
        description="Message not read whole",
        supporting=True,
    )
