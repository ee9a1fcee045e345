"""Evaluation: one message against a :class:`~guard.policy.rules.RuleSet`, to a verdict.

Each field of the message (subject, body, attachments' text, links ...) is normalised and
passed once through the rule set's ``re2.Set``, which tells which terms occur at all. Only
rules whose terms all occur are then checked for position (the word window) and
cancelling phrases, so harmless mail costs one automaton pass per field. The structural
checks run beside them, and the findings add up per category into the risk level.
Loading and compiling the rules is ``rules.py``'s.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence, Set
from operator import itemgetter

from guard.mail import Message
from guard.policy.impersonation import (
    check_address_in_subject,
    check_impersonation,
    check_lure_link,
)
from guard.policy.model import (
    CATEGORIES,
    UNCHECKED_RULE,
    Finding,
    Verdict,
    unchecked_finding,
)
from guard.policy.normalize import collapsed_offsets, normalise_info, normalise_tracked
from guard.policy.rules import DEFAULT_FIELDS, RuleSet, TextRule
from guard.policy.rx import spans as match_spans
from guard.policy.structural import (
    Hit,
    is_trusted_platform_sender,
    run_checks,
)

MAX_SCAN_CHARS = 200_000  # per text of a field; beyond it the beginning and end are scanned
MAX_SPANS = 64
_START = itemgetter(0)
_END = itemgetter(1)


class _Field:
    """One field of a message: original text, normalised text, matches (all lazy)."""

    __slots__ = ("_ascii", "_plain", "_tracked", "matched", "norm", "original", "spans")

    def __init__(self, original: str, rules: RuleSet) -> None:
        self.original = original
        self.norm, self._plain = normalise_info(original)
        # ASCII text (most mail once normalised) is searched as bytes: offsets are the same.
        self._ascii = self.norm.encode("ascii") if self.norm.isascii() else None
        self.matched = (
            frozenset(rules.atom_set.Match(self._ascii or self.norm) or ())
            if self.norm
            else frozenset()
        )
        self.spans: dict[int, list[tuple[int, int]]] = {}
        self._tracked: tuple[str, list[int]] | None = None

    def positions(self, rules: RuleSet, atom: int) -> list[tuple[int, int]]:
        spans = self.spans.get(atom)
        if spans is None:
            if self._ascii is not None:
                spans = match_spans(rules.ascii_atom(atom), self._ascii, MAX_SPANS)
            else:
                spans = match_spans(rules.atoms[atom], self.norm, MAX_SPANS)
            self.spans[atom] = spans
        return spans

    def evidence(self, start: int, end: int) -> str:
        """The original text behind ``norm[start:end]`` with a little context."""
        last = len(self.norm) - 1
        first_last = (min(start, last), min(max(end - 1, 0), last))
        if self._plain and self.norm:
            s, e = collapsed_offsets(self.original, first_last)
            return _snippet(self.original, s, e + 1)
        if self._tracked is None:
            self._tracked = normalise_tracked(self.original)
        norm, offsets = self._tracked
        if norm != self.norm or not offsets:
            source, s, e = self.norm, start, end
        else:
            source = self.original
            s = offsets[first_last[0]]
            e = offsets[first_last[1]] + 1
        return _snippet(source, s, e)


def _snippet(text: str, start: int, end: int, context: int = 50, limit: int = 240) -> str:
    while start < end and not text[start].isalnum() and text[start] not in "+@$€£#(":
        start += 1
    while end > start and not text[end - 1].isalnum() and text[end - 1] not in ")/":
        end -= 1
    left = max(0, start - context)
    right = min(len(text), end + context)
    while left > 0 and not text[left - 1].isspace() and start - left < context + 20:
        left -= 1
    while right < len(text) and not text[right].isspace() and right - end < context + 20:
        right += 1
    snippet = " ".join(text[left:right].split())
    if len(snippet) > limit:
        snippet = snippet[: limit - 1] + "…"
    prefix = "…" if left > 0 else ""
    suffix = "…" if right < len(text) and not snippet.endswith("…") else ""
    return f"{prefix}{snippet}{suffix}"


def _words_between(norm: str, a: int, b: int) -> int:
    """Words between two positions: normalised text has exactly one space between words."""
    if b <= a:
        return 0
    return norm.count(" ", a, b)


def _distance(norm: str, x: tuple[int, int], y: tuple[int, int]) -> int:
    if x[1] <= y[0]:
        return _words_between(norm, x[1], y[0])
    if y[1] <= x[0]:
        return _words_between(norm, y[1], x[0])
    return 0


# Spans of one atom come from ``finditer``: ordered and non-overlapping, so their starts
# and their ends both ascend. Against a fixed span ``x``, the spans entirely before it
# form a prefix of the list (their distance to ``x`` shrinks towards its end), the spans
# entirely after it a suffix (distance grows), and those in between overlap it
# (distance 0). The searches below use that to count words over the few gaps next to
# ``x`` rather than from ``x`` to every span of the list (long bodies made that the
# engine's biggest cost); they return exactly what a scan of the whole list would.


def _partition(spans: list[tuple[int, int]], x: tuple[int, int]) -> tuple[int, int]:
    """(end of the "before" prefix, start of the "after" suffix) of ``spans`` for ``x``."""
    after = bisect_left(spans, x[1], key=_START)
    before = min(bisect_right(spans, x[0], key=_END), after)
    return before, after


def _nearest(
    norm: str, x: tuple[int, int], spans: list[tuple[int, int]], limit: int
) -> tuple[int, int] | None:
    """The first span in ``spans`` at the smallest word distance from ``x``, if that
    distance is at most ``limit``."""
    before, after = _partition(spans, x)
    best: tuple[int, int] | None = None
    best_d = limit + 1
    if before:
        j = before - 1
        d = _words_between(norm, spans[j][1], x[0])
        if d < best_d:
            # Earlier spans at the same distance come first in the list: take the first.
            while j > 0 and not _words_between(norm, spans[j - 1][1], spans[j][1]):
                j -= 1
            best, best_d = spans[j], d
    if best_d > 0 and before < after:
        return spans[before]
    if after < len(spans) and _words_between(norm, x[1], spans[after][0]) < best_d:
        return spans[after]
    return best


def _within(
    norm: str, x: tuple[int, int], spans: list[tuple[int, int]], limit: int
) -> list[tuple[int, int]]:
    """The spans of ``spans`` at most ``limit`` words from ``x``, in list order."""
    before, after = _partition(spans, x)
    lo = before
    d = 0
    while lo > 0:
        edge = spans[lo][1] if lo < before else x[0]
        d += _words_between(norm, spans[lo - 1][1], edge)
        if d > limit:
            break
        lo -= 1
    hi = after
    d = 0
    while hi < len(spans):
        edge = spans[hi - 1][0] if hi > after else x[1]
        d += _words_between(norm, edge, spans[hi][0])
        if d > limit:
            break
        hi += 1
    return spans[lo:hi]


def _match_rule(rules: RuleSet, rule: TextRule, fld: _Field) -> tuple[int, int] | None:
    """The span where every group of ``rule`` occurs within its window, not cancelled."""
    norm = fld.norm
    first, *others = rule.groups
    for anchor in fld.positions(rules, first):
        start, end = anchor
        ok = True
        for group in others:
            best = _nearest(norm, anchor, fld.positions(rules, group), rule.window)
            if best is None:
                ok = False
                break
            start, end = min(start, best[0]), max(end, best[1])
        if not ok or _words_between(norm, start, end) > rule.window:
            continue
        if _cancelled(rules, rule, fld, (start, end)):
            continue
        return start, end
    return None


# A cancelling phrase that is itself negated ("not through Upwork") does not cancel; a
# clause mark in between ends the negation ("If not, reset your password").
_NEGATED_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnever|instead of|rather than|\bwithout|\bno|\bskip|\bavoid|\bbypass"
    r"|\bsem|\bsin|\bsans|\bohne|\bбез|\bмимо)"
    r"[^\w,.;:!?]{1,3}(?:\w+[^\w,.;:!?]{1,3})?$"
)


def _cancelled(rules: RuleSet, rule: TextRule, fld: _Field, span: tuple[int, int]) -> bool:
    for atoms, window in ((rule.unless, rule.unless_window), (rule.unless_near, rule.near_window)):
        for atom in atoms:
            if atom not in fld.matched:
                continue
            others = fld.positions(rules, atom)
            for other in others if window < 0 else _within(fld.norm, span, others, window):
                if _NEGATED_BEFORE.search(fld.norm, max(0, other[0] - 24), other[0]):
                    continue
                return True
    return False


def html_says_more(text: str, html: str) -> bool:
    """True when the HTML alternative's text is not just the plain part again."""
    return bool(html.strip()) and html != text and html.split() != text.split()


def _body_texts(msg: Message) -> list[str]:
    """The texts of the "body" field: the plain text and, when it says something else,
    the text of the HTML alternative too (a bland text/plain part must not hide a
    request written only in text/html). Each is scanned on its own."""
    text, html = msg.text, msg.html_text
    if not text.strip():
        return [html]
    return [text, html] if html_says_more(text, html) else [text]


def _field_texts(msg: Message) -> dict[str, str | list[str]]:
    return {
        "subject": msg.subject,
        "body": _body_texts(msg),
        "attachments": "\n".join(a.text for a in msg.attachments if a.text),
        "links": "\n".join(link.href for link in msg.links),
        "from": f"{msg.from_.name} {msg.from_.addr}" if msg.from_ else "",
        "filenames": "\n".join(a.filename for a in msg.attachments if a.filename),
    }


def evaluate(
    rules: RuleSet,
    msg: Message,
    fields_out: dict[str, list[_Field]] | None = None,
    relayed: bool = False,
) -> Verdict:
    """Run every rule and structural check on ``msg`` and sum the findings into a verdict.

    ``fields_out``, when given, receives the normalised fields (the concept layer reads the
    same normalised text instead of normalising it again). ``relayed``: the message is a
    platform's notification carrying someone's words (see ``is_relayed_message``): every
    text rule runs on them, while the structural checks still trust the platform.
    """
    notes: list[str] = []
    unchecked = list(msg.unchecked)
    fields: dict[str, list[_Field]] = {} if fields_out is None else fields_out
    for name, value in _field_texts(msg).items():
        if not value or name not in rules.fields_used:
            continue
        for text in [value] if isinstance(value, str) else value:
            if not text:
                continue
            pieces = [text]
            if len(text) > MAX_SCAN_CHARS:
                # The beginning and the end, each on its own: padding in front of (or
                # behind) a sentence cannot push it out of reach, and no match spans
                # the gap between the two.
                note = (
                    f"{name}: only the first and last {MAX_SCAN_CHARS // 2:,} of "
                    f"{len(text):,} characters were scanned"
                )
                notes.append(note)
                unchecked.append(note)
                half = MAX_SCAN_CHARS // 2
                pieces = [text[:half], text[len(text) - half :]]
            fields.setdefault(name, []).extend(_Field(piece, rules) for piece in pieces)
    # Rules that can fire at all: every group atom occurs in one field (one set lookup per
    # matched atom, so harmless mail with few matches costs almost nothing).
    candidates: set[int] = set()
    for units in fields.values():
        for seen in units:
            for atom in seen.matched:
                candidates.update(rules.by_atom.get(atom, ()))
    trusted = is_trusted_platform_sender(rules.structural, msg)
    lures = _concepts_found(rules, fields)
    if not candidates:
        return sum_findings(
            rules, _structural_findings(rules, msg, trusted, lures), notes, unchecked
        )
    anywhere = frozenset().union(
        *(unit.matched for f in DEFAULT_FIELDS for unit in fields.get(f, ()))
    )
    bulk = msg.is_bulk
    findings: list[Finding] = []
    for index in sorted(candidates):
        rule = rules.text_rules[index]
        if trusted and not relayed and rule.trusted == "skip":
            continue
        if rule.requires and anywhere.isdisjoint(rule.requires):
            continue
        for name, fld in ((n, unit) for n in rule.fields for unit in fields.get(n, ())):
            if not rule.group_set <= fld.matched:
                continue
            span = _match_rule(rules, rule, fld)
            if span is None:
                continue
            score = rule.score
            dampened = bulk and rule.bulk == "dampen"
            if dampened:
                score = round(score * rules.bulk_factor, 2)
            findings.append(
                Finding(
                    rule=rule.id,
                    category=rule.category,
                    score=score,
                    where=name,
                    evidence=fld.evidence(*span),
                    explanation=rule.explanation,
                    description=rule.description,
                    dampened=dampened,
                    supporting=rule.supporting,
                )
            )
            break
    findings.extend(_structural_findings(rules, msg, trusted, lures))
    return sum_findings(rules, findings, notes, unchecked)


def _concepts_found(rules: RuleSet, fields: Mapping[str, list[_Field]]) -> set[str]:
    """The names of the concepts in the subject and the new text (from the set pass every
    field already had: no search of its own)."""
    cs = rules.concepts
    if cs is None:
        return set()
    return {
        cs.concepts[i].name
        for name in ("subject", "body")
        for fld in fields.get(name, ())
        for i in rules.concepts_in(fld.matched)
    }


def text_categories(rules: RuleSet, text: str, trusted: bool = False) -> set[str]:
    """The categories of the text rules that fire on ``text`` read as a body: what the
    judge wants to know about quoted history and signatures. No structural checks, no
    findings, no evidence (cheaper than :func:`evaluate`); ``trusted``: the sender is a
    verified platform (rules marked ``trusted = "skip"`` do not run)."""
    if not text or "body" not in rules.fields_used:
        return set()
    pieces = [text]
    if len(text) > MAX_SCAN_CHARS:
        half = MAX_SCAN_CHARS // 2
        pieces = [text[:half], text[len(text) - half :]]
    units = [_Field(piece, rules) for piece in pieces]
    candidates: set[int] = set()
    for unit in units:
        for atom in unit.matched:
            candidates.update(rules.by_atom.get(atom, ()))
    anywhere = frozenset().union(*(unit.matched for unit in units))
    found: set[str] = set()
    for index in sorted(candidates):
        rule = rules.text_rules[index]
        if rule.category in found or rule.score <= 0 or "body" not in rule.fields:
            continue
        if (trusted and rule.trusted == "skip") or (
            rule.requires and anywhere.isdisjoint(rule.requires)
        ):
            continue
        for unit in units:
            if rule.group_set <= unit.matched and _match_rule(rules, rule, unit) is not None:
                found.add(rule.category)
                break
    return found


def _structural_findings(
    rules: RuleSet, msg: Message, trusted: bool, lures: Set[str] = frozenset()
) -> list[Finding]:
    """``lures``: the concepts found in the text (a brand claimed together with a lure is
    an impersonation)."""
    out: list[Finding] = []
    seen: set[str] = set()
    hits: list[Hit] = run_checks(rules.structural, msg)
    hits.extend(check_impersonation(rules.structural.catalogue, msg, lures))
    hits.extend(check_lure_link(rules.structural, msg, lures, hits))
    hits.extend(check_address_in_subject(msg, lures))
    for hit in hits:
        spec = rules.checks.get(hit.check)
        if spec is None or hit.check in seen or (trusted and spec.trusted == "skip"):
            continue
        seen.add(hit.check)
        out.append(
            Finding(
                rule=spec.id,
                category=spec.category,
                score=spec.score,
                where=hit.where,
                evidence=hit.evidence,
                explanation=spec.explanation,
                description=spec.description,
                supporting=spec.supporting,
            )
        )
    return out


def category_sums(findings: Sequence[Finding]) -> dict[str, float]:
    """The hand-set scores of ``findings`` summed per category (see :func:`sum_findings`)."""
    counted = [] if all(f.supporting for f in findings) else findings
    per_category: dict[str, float] = {}
    dampened_max: dict[str, float] = {}
    for f in counted:
        if f.dampened:
            dampened_max[f.category] = max(dampened_max.get(f.category, 0.0), f.score)
        else:
            per_category[f.category] = per_category.get(f.category, 0.0) + f.score
    for category, score in dampened_max.items():
        per_category[category] = per_category.get(category, 0.0) + score
    return per_category


def sum_findings(
    rules: RuleSet, findings: list[Finding], notes: list[str], unchecked: Sequence[str] = ()
) -> Verdict:
    """Sum findings per category into the risk level.

    A message not read whole (``unchecked``: the parser's reasons and the engine's own
    cuts) also gets :func:`unchecked_finding`, which scores nothing and names no category.

    Findings from bulk mail count only with their largest score per category (a newsletter
    quoting five warning examples is not five times as risky), and "supporting" findings
    count only next to a finding that is not.
    """
    per_category = category_sums(findings)
    counting = [c for c in CATEGORIES if per_category.get(c, 0.0) >= rules.levels["low"]]
    total = round(sum(per_category[c] for c in counting), 2)
    risk = "none"
    for level in ("low", "medium", "high"):
        if counting and total >= rules.levels[level]:
            risk = level
    reasons = tuple(dict.fromkeys(unchecked))
    if reasons and not any(f.rule == UNCHECKED_RULE for f in findings):
        findings.append(unchecked_finding(reasons))
    findings.sort(key=lambda f: (-f.score, f.rule))
    return Verdict(
        risk=risk,
        score=total,
        categories=tuple(counting),
        findings=tuple(findings),
        notes=tuple(notes),
        unchecked=reasons,
    )
