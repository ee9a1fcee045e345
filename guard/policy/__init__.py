"""The policy engine: a pure function from (rules, Message) to a Verdict.

``load_rules`` reads the built-in rules shipped with the package plus any user rule
files; ``evaluate`` (``judge.py``) splits the body into new and quoted text, runs the text
rules, structural checks and concept detection, and adds up the learned scores.

May import only ``guard.errors`` and ``guard.mail``: never the mailbox, the store, the
configuration or the reports, so that a verdict depends on the message and the rules alone.
"""

from guard.policy.engine import RuleSet, load_rules
from guard.policy.judge import evaluate
from guard.policy.model import CATEGORIES, LEVELS, Finding, RulesError, Verdict, level_at_least

__all__ = [
    "CATEGORIES",
    "LEVELS",
    "Finding",
    "RuleSet",
    "RulesError",
    "Verdict",
    "evaluate",
    "level_at_least",
    "load_rules",
]
