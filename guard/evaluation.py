"""Precision, recall and flag rates of the policy engine on a corpus (``inbox-guard eval``).

Pure functions over plain data: the command line reads the messages and runs the engine,
turns each verdict into an :class:`Outcome` with :func:`outcome_from_verdict`, and this
module adds them up and renders the report.

Definitions used throughout:

* a message is *predicted* to carry a category when the category is in
  ``Verdict.categories``; a message is *flagged* when its risk is at least ``min_risk``;
* per category: precision = TP/(TP+FP), recall = TP/(TP+FN), F1 their harmonic mean;
  a ratio with a zero denominator is ``None`` (printed ``n/a``), and F1 is 0.0 when
  precision or recall is 0 or undefined while the category was labelled or predicted;
* macro-F1 = the mean F1 over the categories that were labelled or predicted at least
  once (a category absent from both sides says nothing about the engine and is left out;
  on a corpus where every category occurs this is the mean over all seven);
* risky recall = flagged risky messages / risky messages (a risky message has >= 1 label);
* ham flag rate = flagged ham messages / ham messages (ham = no label).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guard.policy.model import CATEGORIES, Verdict, level_at_least

__all__ = [
    "CategoryStats",
    "LabelsError",
    "Outcome",
    "Report",
    "UnlabelledReport",
    "category_stats",
    "f1_score",
    "macro_f1",
    "misses",
    "outcome_from_verdict",
    "parse_labels",
    "ratio",
    "render_report",
    "render_unlabelled",
    "report_to_dict",
    "summarize",
    "summarize_unlabelled",
    "unlabelled_to_dict",
]

EVIDENCE_WIDTH = 80


class LabelsError(ValueError):
    """``labels.csv`` is malformed; the message names the file and the line."""


# --------------------------------------------------------------------------- labels


def parse_labels(
    text: str, name: str = "labels.csv", categories: Sequence[str] = CATEGORIES
) -> list[tuple[str, frozenset[str]]]:
    """``(file, categories)`` rows of a labels file (header ``file,categories,notes``).

    Categories are separated by ``;``; empty means ham. Unknown categories, a missing
    header, empty or duplicate file names raise :class:`LabelsError`.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["file", "categories"]:
        raise LabelsError(f"{name}: line 1: expected the header 'file,categories,notes'")
    known = set(categories)
    rows: list[tuple[str, frozenset[str]]] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip():
            continue
        file = row[0].strip()
        if not file:
            raise LabelsError(f"{name}: line {line}: empty file name")
        if file in seen:
            raise LabelsError(f"{name}: line {line}: '{file}' is listed twice")
        seen.add(file)
        cats = frozenset(c.strip() for c in (row[1] if len(row) > 1 else "").split(";"))
        cats -= {""}
        unknown = sorted(cats - known)
        if unknown:
            raise LabelsError(f"{name}: line {line}: unknown category '{unknown[0]}'")
        rows.append((file, cats))
    return rows


# --------------------------------------------------------------------------- metrics


def ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, or None when the denominator is 0."""
    return numerator / denominator if denominator else None


def f1_score(precision: float | None, recall: float | None) -> float:
    """Harmonic mean; 0.0 when either side is 0 or undefined."""
    if not precision or not recall:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True, slots=True)
class CategoryStats:
    """Confusion counts of one category over a corpus."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def support(self) -> int:
        """Messages labelled with the category."""
        return self.tp + self.fn

    @property
    def predicted(self) -> int:
        """Messages the engine gave the category."""
        return self.tp + self.fp

    @property
    def precision(self) -> float | None:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        """None when the category was neither labelled nor predicted."""
        if not (self.support or self.predicted):
            return None
        return f1_score(self.precision, self.recall)


def category_stats(
    pairs: Iterable[tuple[frozenset[str], frozenset[str]]],
    categories: Sequence[str] = CATEGORIES,
) -> dict[str, CategoryStats]:
    """Per-category TP/FP/FN from ``(expected, predicted)`` category sets."""
    counts = {c: [0, 0, 0] for c in categories}
    for expected, predicted in pairs:
        for c in categories:
            e, p = c in expected, c in predicted
            if e and p:
                counts[c][0] += 1
            elif p:
                counts[c][1] += 1
            elif e:
                counts[c][2] += 1
    return {c: CategoryStats(*n) for c, n in counts.items()}


def macro_f1(stats: dict[str, CategoryStats]) -> float | None:
    """Mean F1 over the categories that were labelled or predicted (None if none were)."""
    scores = [s.f1 for s in stats.values() if s.f1 is not None]
    return sum(scores) / len(scores) if scores else None


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the engine said about one message of the corpus, and what was expected.

    ``expected`` is None when only "risky" is known (``--all-risky``), not which categories.
    ``evidence`` maps each predicted category to its strongest finding, as
    ``(rule, evidence)``, strongest category first.
    """

    file: str
    expected: frozenset[str] | None
    risky: bool
    predicted: frozenset[str]
    risk: str
    score: float
    flagged: bool
    evidence: dict[str, tuple[str, str]] = field(default_factory=dict)


def outcome_from_verdict(
    file: str,
    expected: frozenset[str] | None,
    verdict: Verdict,
    min_risk: str,
    *,
    risky: bool | None = None,
) -> Outcome:
    """Compare one verdict with its labels. ``risky`` defaults to "has a label"."""
    best: dict[str, tuple[float, str, str]] = {}
    for f in verdict.findings:
        if f.category in verdict.categories and (
            f.category not in best or f.score > best[f.category][0]
        ):
            best[f.category] = (f.score, f.rule, f.evidence)
    return Outcome(
        file=file,
        expected=expected,
        risky=bool(expected) if risky is None else risky,
        predicted=frozenset(verdict.categories),
        risk=verdict.risk,
        score=verdict.score,
        flagged=level_at_least(verdict.risk, min_risk),
        evidence={
            c: (rule, ev) for c, (_, rule, ev) in sorted(best.items(), key=lambda kv: -kv[1][0])
        },
    )


@dataclass(frozen=True, slots=True)
class Miss:
    """A message whose predicted categories differ from its labels."""

    file: str
    missed: tuple[str, ...]
    extra: tuple[str, ...]
    evidence: dict[str, tuple[str, str]]


def misses(outcomes: Iterable[Outcome], categories: Sequence[str] = CATEGORIES) -> list[Miss]:
    """False negatives and false positives per file, categories in CATEGORIES order."""
    found = []
    for o in outcomes:
        expected = o.expected or frozenset()
        missed = tuple(c for c in categories if c in expected and c not in o.predicted)
        extra = tuple(c for c in categories if c in o.predicted and c not in expected)
        if missed or extra:
            found.append(
                Miss(o.file, missed, extra, {c: o.evidence[c] for c in extra if c in o.evidence})
            )
    return found


# --------------------------------------------------------------------------- labelled report


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``eval`` prints for a labelled corpus."""

    corpus: str
    min_risk: str
    messages: int
    ham: int
    risky: int
    per_category: dict[str, CategoryStats]
    macro_f1: float | None
    risky_flagged: int
    ham_flagged: int
    misses: list[Miss]

    @property
    def risky_recall(self) -> float | None:
        return ratio(self.risky_flagged, self.risky)

    @property
    def ham_flag_rate(self) -> float | None:
        return ratio(self.ham_flagged, self.ham)


def summarize(
    outcomes: Sequence[Outcome],
    corpus: str = "",
    min_risk: str = "low",
    categories: Sequence[str] = CATEGORIES,
) -> Report:
    """Add up the outcomes of a labelled corpus."""
    stats = category_stats(((o.expected or frozenset(), o.predicted) for o in outcomes), categories)
    risky = [o for o in outcomes if o.risky]
    ham = [o for o in outcomes if not o.risky]
    return Report(
        corpus=corpus,
        min_risk=min_risk,
        messages=len(outcomes),
        ham=len(ham),
        risky=len(risky),
        per_category=stats,
        macro_f1=macro_f1(stats),
        risky_flagged=sum(o.flagged for o in risky),
        ham_flagged=sum(o.flagged for o in ham),
        misses=misses(outcomes, categories),
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _shorten(text: str, width: int = EVIDENCE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _miss_line(m: Miss) -> str:
    parts = []
    if m.missed:
        parts.append("missed " + ", ".join(m.missed))
    if m.extra:
        extras = []
        for c in m.extra:
            if c in m.evidence:
                rule, ev = m.evidence[c]
                extras.append(f'{c} ({rule}: "{_shorten(ev)}")')
            else:
                extras.append(c)
        parts.append("extra " + ", ".join(extras))
    return f"{m.file}: " + "; ".join(parts)


def _rate_line(label: str, value: float | None, num: int, den: int, what: str, lvl: str) -> str:
    return f"{label}: {_fmt(value)} ({num}/{den} {what} flagged at risk >= {lvl})"


def render_report(report: Report) -> list[str]:
    """The text report, one string per line; the summary figures come last."""
    lines = [
        f"corpus: {report.corpus}",
        f"messages: {report.messages} ({report.ham} ham, {report.risky} risky); "
        f"flagged = risk >= {report.min_risk}",
        "",
        f"misses ({len(report.misses)} files; file: missed X; extra Y):",
    ]
    lines += [f"  {_miss_line(m)}" for m in report.misses] or ["  (none)"]
    lines += [
        "",
        f"{'category':<22} {'precision':>9} {'recall':>7} {'F1':>6} "
        f"{'TP':>4} {'FP':>4} {'FN':>4} {'support':>7}",
    ]
    for cat, s in report.per_category.items():
        lines.append(
            f"{cat:<22} {_fmt(s.precision):>9} {_fmt(s.recall):>7} {_fmt(s.f1):>6} "
            f"{s.tp:>4} {s.fp:>4} {s.fn:>4} {s.support:>7}"
        )
    counted = sum(1 for s in report.per_category.values() if s.f1 is not None)
    lines += [
        "",
        f"macro-F1: {_fmt(report.macro_f1)} (over {counted} of "
        f"{len(report.per_category)} categories)",
        _rate_line(
            "risky recall",
            report.risky_recall,
            report.risky_flagged,
            report.risky,
            "risky messages",
            report.min_risk,
        ),
        _rate_line(
            "ham flag rate",
            report.ham_flag_rate,
            report.ham_flagged,
            report.ham,
            "ham messages",
            report.min_risk,
        ),
    ]
    return lines


def _num(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data."""
    data: dict[str, Any] = {
        "corpus": report.corpus,
        "min_risk": report.min_risk,
        "messages": report.messages,
        "ham": report.ham,
        "risky": report.risky,
        "per_category": {
            c: {
                "precision": _num(s.precision),
                "recall": _num(s.recall),
                "f1": _num(s.f1),
                "tp": s.tp,
                "fp": s.fp,
                "fn": s.fn,
                "support": s.support,
            }
            for c, s in report.per_category.items()
        },
        "macro_f1": _num(report.macro_f1),
        "risky_recall": _num(report.risky_recall),
        "risky_flagged": report.risky_flagged,
        "ham_flag_rate": _num(report.ham_flag_rate),
        "ham_flagged": report.ham_flagged,
        "misses": [
            {
                "file": m.file,
                "missed": list(m.missed),
                "extra": list(m.extra),
                "evidence": {c: {"rule": r, "evidence": e} for c, (r, e) in m.evidence.items()},
            }
            for m in report.misses
        ],
    }
    return data


# --------------------------------------------------------------------------- unlabelled report


@dataclass(frozen=True, slots=True)
class UnlabelledReport:
    """``eval --all-ham`` / ``--all-risky``: every message is assumed ham, or risky."""

    corpus: str
    assumed: str  # "ham" or "risky"
    min_risk: str
    messages: int
    flagged: list[Outcome]
    category_counts: dict[str, int]
    risk_counts: dict[str, int]

    @property
    def flag_rate(self) -> float | None:
        return ratio(len(self.flagged), self.messages)


def summarize_unlabelled(
    outcomes: Sequence[Outcome],
    corpus: str = "",
    assumed: str = "ham",
    min_risk: str = "low",
    categories: Sequence[str] = CATEGORIES,
    levels: Sequence[str] = ("none", "low", "medium", "high"),
) -> UnlabelledReport:
    """Flag rate, flagged files and per-category / per-level counts."""
    cat_counts = {c: 0 for c in categories}
    risk_counts = {lvl: 0 for lvl in levels}
    for o in outcomes:
        for c in o.predicted:
            cat_counts[c] = cat_counts.get(c, 0) + 1
        risk_counts[o.risk] = risk_counts.get(o.risk, 0) + 1
    return UnlabelledReport(
        corpus=corpus,
        assumed=assumed,
        min_risk=min_risk,
        messages=len(outcomes),
        flagged=[o for o in outcomes if o.flagged],
        category_counts=cat_counts,
        risk_counts=risk_counts,
    )


def render_unlabelled(report: UnlabelledReport) -> list[str]:
    """The text report, one string per line; the flag rate comes last."""
    lines = [
        f"corpus: {report.corpus} (every message assumed {report.assumed})",
        f"messages: {report.messages}; flagged = risk >= {report.min_risk}",
        "",
        f"flagged files ({len(report.flagged)}):",
    ]
    for o in report.flagged:
        cats = ", ".join(c for c in CATEGORIES if c in o.predicted) or "-"
        top = next(iter(o.evidence.items()), None)
        ev = f' ({top[1][0]}: "{_shorten(top[1][1])}")' if top else ""
        lines.append(f"  {o.file}: {o.risk} {o.score:g}: {cats}{ev}")
    if not report.flagged:
        lines.append("  (none)")
    lines += ["", "messages per category:"]
    lines += [f"  {c:<22} {n:>6}" for c, n in report.category_counts.items()]
    lines.append(
        "messages per risk: " + ", ".join(f"{lvl} {n}" for lvl, n in report.risk_counts.items())
    )
    lines.append(
        f"flag rate: {_fmt(report.flag_rate)} ({len(report.flagged)}/{report.messages} "
        f"{report.assumed} messages flagged at risk >= {report.min_risk})"
    )
    return lines


def unlabelled_to_dict(report: UnlabelledReport) -> dict[str, Any]:
    """The unlabelled report as JSON-ready data."""
    data: dict[str, Any] = {
        "corpus": report.corpus,
        "assumed": report.assumed,
        "min_risk": report.min_risk,
        "messages": report.messages,
        "flagged": len(report.flagged),
        "flag_rate": _num(report.flag_rate),
        "category_counts": report.category_counts,
        "risk_counts": report.risk_counts,
        "flagged_files": [
            {
                "file": o.file,
                "risk": o.risk,
                "score": o.score,
                "categories": [c for c in CATEGORIES if c in o.predicted],
                "evidence": {c: {"rule": r, "evidence": e} for c, (r, e) in o.evidence.items()},
            }
            for o in report.flagged
        ],
    }
    return data
