"""The built-in rules, loaded once per test process.

Loading them and building their RE2 set takes about 1.5 s; tests that scan many small
mailboxes (property tests, one mailbox per example) would spend most of their time on it.
The rule set is read-only once built, so sharing it changes nothing a test checks."""

from __future__ import annotations

from functools import cache

from guard.policy import RuleSet, load_rules


@cache
def builtin_rules() -> RuleSet:
    return load_rules()
