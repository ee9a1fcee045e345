"""The policy engine: a pure function from (rules, Message) to a Verdict.

``load_rules`` reads the built-in rules shipped with the package plus any user rule
files; ``evaluate`` runs normalisation, text rules and structural checks on one message.
"""

from guard.policy.engine import RuleSet, evaluate, load_rules
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
