"""The policy engine: a pure function from (rules, Message) to a Verdict.

``load_rules`` reads the built-in rules shipped with the package plus any user rule
files; ``evaluate`` (``judge.py``) splits the body into new and quoted text, runs the text
rules, structural checks and concept detection, and adds up the learned scores.

Where each concern lives: ``terms`` translates the rule language to RE2; ``rules`` loads,
merges and compiles rule files into a :class:`RuleSet`; ``engine`` evaluates one message
against it (fields, matching, findings, :func:`sum_findings`); ``judge`` segments the body
and adds the learned scores (``learned``, ``concepts``, ``segment``); ``structural``,
``impersonation``, ``brands`` and ``domains`` are the checks on senders, links and
attachments; ``normalize`` folds text before matching; ``model`` is the plain data.

May import only ``guard.errors`` and ``guard.mail``: never the mailbox, the store, the
configuration or the reports, so that a verdict depends on the message and the rules alone.
"""

from guard.policy.engine import sum_findings
from guard.policy.judge import evaluate, warm_up
from guard.policy.model import CATEGORIES, LEVELS, Finding, RulesError, Verdict, level_at_least
from guard.policy.rules import RuleSet, load_rules

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
    "sum_findings",
    "warm_up",
]
