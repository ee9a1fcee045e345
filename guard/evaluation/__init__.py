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

The corpus table (``inbox-guard eval --table ROOT``, ``make eval``) adds, per corpus:

* obfuscated recall = flagged / risky messages tagged ``obfuscated``;
* non-English recall = flagged / risky messages with a ``lang=xx`` tag other than ``en``
  (``lang=mixed``, code-switching, counts as non-English; no tag means English);
* per-category recall as above, and summary rows over the ``writers/*`` corpora: the mean
  and the minimum of each column (over the writers where it is defined) and the figures
  of all their messages pooled.

Tags come from the ``notes`` column (:func:`note_tags`): each ``;``-separated field that
is one tag word (a lower-case word or ``key=value``: ``obfuscated``, ``lang=fr``) or two or
three with a ``key=value`` among them (``sent lang=fr``), and the words after the last
``|`` when all are tag words (``... | thread=x sent obfuscated``). A
labels file where no note carries a tag (``freelance-dev``) is read by its own prose
convention (:func:`prose_tags`): a note opening with ``Obfuscation:`` is obfuscated, and a
language named in the note's opening clause (``Portuguese (BR), ...``, ``Hard negative
(German, ...)``, ``Roman Urdu/English mix: ...``) gives its ``lang=`` tag.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guard.errors import GuardError, Kind
from guard.policy.model import CATEGORIES, Verdict, level_at_least

__all__ = [
    "CategoryStats",
    "CorpusRow",
    "LabelRow",
    "LabelsError",
    "Outcome",
    "Report",
    "TableMiss",
    "UnlabelledReport",
    "category_stats",
    "corpus_row",
    "f1_score",
    "is_non_english",
    "macro_f1",
    "misses",
    "note_tags",
    "outcome_from_verdict",
    "parse_label_rows",
    "parse_labels",
    "prose_tags",
    "ratio",
    "render_misses",
    "render_report",
    "render_table",
    "render_table_markdown",
    "render_unlabelled",
    "report_to_dict",
    "summarize",
    "summarize_unlabelled",
    "summary_rows",
    "table_misses",
    "table_to_dict",
    "unlabelled_to_dict",
]

EVIDENCE_WIDTH = 80


class LabelsError(GuardError, ValueError):
    """``labels.csv`` is malformed; the message names the file and the line."""

    kind = Kind.INPUT


# --------------------------------------------------------------------------- labels


OBFUSCATED = "obfuscated"
_TAG_WORD = re.compile(r"[a-z][a-z-]*(?:=[a-z0-9_-]+)?")
_LANGUAGE_NAMES = {
    "arabic": "ar",
    "chinese": "zh",
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hindi": "hi",
    "hinglish": "hi",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "polish": "pl",
    "portuguese": "pt",
    "russian": "ru",
    "spanish": "es",
    "turkish": "tr",
    "ukrainian": "uk",
    "urdu": "ur",
    "vietnamese": "vi",
}
_LANGUAGE_WORD = re.compile(r"\b(" + "|".join(_LANGUAGE_NAMES) + r")\b", re.IGNORECASE)
_OPENING_CLAUSE = re.compile(r"[^:;.]{0,80}")


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One line of ``labels.csv``: the file, its categories (empty: ham) and note tags."""

    file: str
    categories: frozenset[str]
    tags: frozenset[str] = frozenset()


def note_tags(notes: str) -> frozenset[str]:
    """The tags of one ``notes`` value (see the module docstring).

    A tag word is a lower-case word or ``key=value``. Tags are each ``;``-separated field
    that is one tag word, the words of a field of two or three tag words one of which is a
    ``key=value``, and the words after the last ``|`` when they all are tag words.
    ``"sent; obfuscated; she gives ..."`` (tags first), ``"... in words; lang=es;
    obfuscated"``, ``"...; sent lang=pl"`` (tags last) and ``"... filters. | thread=jt
    obfuscated"`` (tags after a bar) all give ``obfuscated``.
    """
    tags: set[str] = set()
    text = notes.strip()
    head, bar, tail = text.rpartition("|")
    if bar and _tag_words(tail, limit=None):
        tags.update(tail.split())
        text = head
    for part in text.split(";"):
        words = part.split()
        # one tag word, or a few with a key=value among them ("sent lang=pl"): never prose
        if _tag_words(part, limit=1) or (_tag_words(part, limit=3) and "=" in part):
            tags.update(words)
    return frozenset(tags)


def _tag_words(text: str, limit: int | None) -> bool:
    """True when ``text`` is 1..limit tag-shaped words (lower case, ``key=value``)."""
    words = text.split()
    if not words or (limit is not None and len(words) > limit):
        return False
    return all(_TAG_WORD.fullmatch(w) for w in words)


def prose_tags(notes: str) -> frozenset[str]:
    """Tags read from a note written without tags (``freelance-dev``'s convention)."""
    text = notes.strip()
    tags: set[str] = set()
    if text.lower().startswith("obfuscation:"):
        tags.add(OBFUSCATED)
    opening = _OPENING_CLAUSE.match(text)
    clause = opening.group() if opening else ""
    langs = {_LANGUAGE_NAMES[m.lower()] for m in _LANGUAGE_WORD.findall(clause)}
    non_english = sorted(langs - {"en"})
    if non_english:
        tags.add(f"lang={non_english[0]}")
    return frozenset(tags)


def is_non_english(tags: frozenset[str]) -> bool:
    """True when a ``lang=`` tag names anything but English (``mixed`` included)."""
    return any(t.startswith("lang=") and t != "lang=en" for t in tags)


def parse_labels(
    text: str, name: str = "labels.csv", categories: Sequence[str] = CATEGORIES
) -> list[tuple[str, frozenset[str]]]:
    """``(file, categories)`` rows of a labels file (header ``file,categories,notes``).

    Categories are separated by ``;``; empty means ham. Unknown categories, a missing
    header, empty or duplicate file names raise :class:`LabelsError`.
    """
    return [(r.file, r.categories) for r in parse_label_rows(text, name, categories)]


def parse_label_rows(
    text: str, name: str = "labels.csv", categories: Sequence[str] = CATEGORIES
) -> list[LabelRow]:
    """:func:`parse_labels` with the tags of each note (:func:`note_tags`).

    When no note of the file carries a tag, every note is read with :func:`prose_tags`.
    """
    lines = _label_lines(text, name, categories)
    read = note_tags if any(note_tags(notes) for _, _, notes in lines) else prose_tags
    return [LabelRow(file, cats, read(notes)) for file, cats, notes in lines]


def _label_lines(
    text: str, name: str, categories: Sequence[str]
) -> list[tuple[str, frozenset[str], str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["file", "categories"]:
        raise LabelsError(f"{name}: line 1: expected the header 'file,categories,notes'")
    known = set(categories)
    rows: list[tuple[str, frozenset[str], str]] = []
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
        rows.append((file, cats, ",".join(row[2:])))
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
    ``(rule, evidence)``, strongest category first. ``tags`` are the note's tags
    (:func:`note_tags`); ``top`` is the strongest finding of all, counted or not, as
    ``(rule, category, evidence)``.
    """

    file: str
    expected: frozenset[str] | None
    risky: bool
    predicted: frozenset[str]
    risk: str
    score: float
    flagged: bool
    evidence: dict[str, tuple[str, str]] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    top: tuple[str, str, str] | None = None


def outcome_from_verdict(
    file: str,
    expected: frozenset[str] | None,
    verdict: Verdict,
    min_risk: str,
    *,
    risky: bool | None = None,
    tags: frozenset[str] = frozenset(),
) -> Outcome:
    """Compare one verdict with its labels. ``risky`` defaults to "has a label"."""
    top = max(verdict.findings, key=lambda f: f.score, default=None)
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
        tags=tags,
        top=None if top is None else (top.rule, top.category, top.evidence),
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


# --------------------------------------------------------------------------- corpus table

SHORT_NAMES: dict[str, str] = {
    "off_platform_payment": "PAY",
    "off_platform_contact": "CON",
    "contact_request": "REQ",
    "personal_data": "PD",
    "scam": "SC",
    "phishing": "PH",
    "dispute": "DIS",
}
RATE_KEYS = ("risky_recall", "ham_flag_rate", "obfuscated_recall", "non_english_recall")
TOP_WIDTH = 60


@dataclass(frozen=True, slots=True)
class CorpusRow:
    """One line of the corpus table.

    ``values`` maps each column (``macro_f1``, the :data:`RATE_KEYS` and ``recall.<cat>``)
    to its figure, None where it means nothing (no macro-F1 without labels, no ham flag
    rate on a corpus without ham, no recall of an absent category); ``counts`` holds the
    ``(hits, total)`` behind each ratio of a corpus row (summary rows have none).
    ``assumed`` is ``labels``, ``ham``, ``risky`` (``--all-ham`` / ``--all-risky``) or
    ``summary``.
    """

    corpus: str
    assumed: str
    messages: int | None
    values: dict[str, float | None]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def _recall_key(category: str) -> str:
    return f"recall.{category}"


def column_keys(categories: Sequence[str] = CATEGORIES) -> list[str]:
    """Every figure column of the table, in order."""
    return ["macro_f1", *RATE_KEYS, *(_recall_key(c) for c in categories)]


def corpus_row(
    corpus: str,
    outcomes: Sequence[Outcome],
    assumed: str = "labels",
    categories: Sequence[str] = CATEGORIES,
) -> CorpusRow:
    """The table line of one corpus (see the module docstring for the definitions)."""
    risky = [o for o in outcomes if o.risky]
    ham = [o for o in outcomes if not o.risky]
    counts: dict[str, tuple[int, int]] = {
        "risky_recall": (sum(o.flagged for o in risky), len(risky)),
        "ham_flag_rate": (sum(o.flagged for o in ham), len(ham)),
        "obfuscated_recall": _flagged_among(o for o in risky if OBFUSCATED in o.tags),
        "non_english_recall": _flagged_among(o for o in risky if is_non_english(o.tags)),
    }
    values: dict[str, float | None] = {"macro_f1": None}
    if assumed in ("labels", "summary"):
        stats = category_stats(
            ((o.expected or frozenset(), o.predicted) for o in outcomes), categories
        )
        values["macro_f1"] = macro_f1(stats)
        for c, s in stats.items():
            counts[_recall_key(c)] = (s.tp, s.support)
    values.update({k: ratio(*n) for k, n in counts.items()})
    for c in categories:
        values.setdefault(_recall_key(c), None)
    return CorpusRow(corpus, assumed, len(outcomes), values, counts)


def _flagged_among(outcomes: Iterable[Outcome]) -> tuple[int, int]:
    chosen = list(outcomes)
    return sum(o.flagged for o in chosen), len(chosen)


def summary_rows(
    group: str,
    rows: Sequence[CorpusRow],
    pooled: Sequence[Outcome],
    categories: Sequence[str] = CATEGORIES,
) -> list[CorpusRow]:
    """``<group> (mean)`` and ``<group> (min)`` of each column over ``rows`` (where the
    figure is defined), and ``<group> (pooled)``: the figures of all their messages."""
    keys = column_keys(categories)
    mean: dict[str, float | None] = {}
    low: dict[str, float | None] = {}
    for key in keys:
        figures = [v for r in rows if (v := r.values.get(key)) is not None]
        mean[key] = sum(figures) / len(figures) if figures else None
        low[key] = min(figures) if figures else None
    pooled_row = corpus_row(f"{group} (pooled)", pooled, "summary", categories)
    return [
        CorpusRow(f"{group} (mean)", "summary", None, mean),
        CorpusRow(f"{group} (min)", "summary", None, low),
        pooled_row,
    ]


def _cell(row: CorpusRow, key: str) -> str:
    value = row.values.get(key)
    if value is None:
        return "-"
    text = f"{100 * value:.1f}%" if key == "ham_flag_rate" else f"{value:.2f}"
    if key in ("obfuscated_recall", "non_english_recall") and key in row.counts:
        text += f" ({row.counts[key][1]})"
    return text


def _headers(categories: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(key, header, width)`` of every column after the corpus name."""
    return [
        ("messages", "msgs", 5),
        ("macro_f1", "mF1", 5),
        ("risky_recall", "risky", 5),
        ("ham_flag_rate", "ham%", 6),
        ("obfuscated_recall", "obf (n)", 9),
        ("non_english_recall", "non-en (n)", 10),
        *((_recall_key(c), SHORT_NAMES.get(c, c[:4].upper()), 4) for c in categories),
    ]


def _row_cells(row: CorpusRow, categories: Sequence[str]) -> list[str]:
    cells = []
    for key, _, _ in _headers(categories):
        if key == "messages":
            cells.append("-" if row.messages is None else str(row.messages))
        else:
            cells.append(_cell(row, key))
    return cells


def table_legend(min_risk: str, categories: Sequence[str] = CATEGORIES) -> list[str]:
    """What the columns mean, for the foot of the table (lines under 100 characters)."""
    names = [f"{SHORT_NAMES.get(c, c)} {c}" for c in categories]
    half = min(3, len(names))
    return [
        f"flagged = risk >= {min_risk}; mF1 = macro-F1; risky = risky messages flagged; "
        "ham% = ham flagged;",
        "obf / non-en = risky messages tagged obfuscated / lang other than en that are "
        "flagged (n of them);",
        f"recall per category: {', '.join(names[:half])},",
        f"  {', '.join(names[half:])}; '-' = not defined.",
    ]


def render_table(
    rows: Sequence[CorpusRow],
    summaries: Sequence[CorpusRow] = (),
    categories: Sequence[str] = CATEGORIES,
) -> list[str]:
    """The fixed-width table, one string per line (corpus rows, a rule, summary rows)."""
    headers = _headers(categories)
    name_width = max([len("corpus"), *(len(r.corpus) for r in [*rows, *summaries])])

    def line(name: str, cells: Sequence[str]) -> str:
        body = " ".join(f"{c:>{w}}" for c, (_, _, w) in zip(cells, headers, strict=True))
        return f"{name:<{name_width}} {body}".rstrip()

    lines = [line("corpus", [h for _, h, _ in headers])]
    lines.append("-" * len(lines[0]))
    lines += [line(r.corpus, _row_cells(r, categories)) for r in rows]
    if summaries:
        lines.append("-" * len(lines[0]))
        lines += [line(r.corpus, _row_cells(r, categories)) for r in summaries]
    return lines


def render_table_markdown(
    rows: Sequence[CorpusRow],
    summaries: Sequence[CorpusRow] = (),
    categories: Sequence[str] = CATEGORIES,
) -> list[str]:
    """The same table as a Markdown (GitHub) table; summary rows in italics."""
    headers = _headers(categories)
    lines = [
        "| corpus | " + " | ".join(h for _, h, _ in headers) + " |",
        "|---|" + "---:|" * len(headers),
    ]
    for r in rows:
        lines.append(f"| {r.corpus} | " + " | ".join(_row_cells(r, categories)) + " |")
    for r in summaries:
        lines.append(f"| *{r.corpus}* | " + " | ".join(_row_cells(r, categories)) + " |")
    return lines


def _row_to_dict(row: CorpusRow) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key, value in row.values.items():
        entry: dict[str, Any] = {"value": _num(value)}
        if key in row.counts:
            entry["hits"], entry["total"] = row.counts[key]
        figures[key] = entry
    recall = {k.split(".", 1)[1]: v for k, v in figures.items() if k.startswith("recall.")}
    data: dict[str, Any] = {
        "corpus": row.corpus,
        "assumed": row.assumed,
        "messages": row.messages,
    }
    data.update({k: v for k, v in figures.items() if not k.startswith("recall.")})
    data["recall"] = recall
    return data


def table_to_dict(
    rows: Sequence[CorpusRow],
    summaries: Sequence[CorpusRow],
    min_risk: str,
    misses_by_corpus: dict[str, list[TableMiss]] | None = None,
) -> dict[str, Any]:
    """The table as JSON-ready data (figures rounded to 4 places, with hits and totals)."""
    data: dict[str, Any] = {
        "min_risk": min_risk,
        "corpora": [_row_to_dict(r) for r in rows],
        "summary": [_row_to_dict(r) for r in summaries],
    }
    if misses_by_corpus is not None:
        data["misses"] = {
            corpus: [
                {
                    "file": m.file,
                    "kind": m.kind,
                    "expected": list(m.expected),
                    "got": list(m.got),
                    "risk": m.risk,
                    "top": None
                    if m.top is None
                    else {"rule": m.top[0], "category": m.top[1], "evidence": m.top[2]},
                }
                for m in found
            ]
            for corpus, found in misses_by_corpus.items()
        }
    return data


# --------------------------------------------------------------------------- table misses


@dataclass(frozen=True, slots=True)
class TableMiss:
    """A message the table counts against the engine.

    ``kind`` is ``FN`` (a labelled category not given, or a risky message not flagged),
    ``FP`` (a category given that was not labelled, or a ham message flagged) or
    ``FN+FP``. ``expected`` is ``("risky",)`` for an ``--all-risky`` corpus.
    """

    file: str
    kind: str
    expected: tuple[str, ...]
    got: tuple[str, ...]
    risk: str
    top: tuple[str, str, str] | None


def table_misses(
    outcomes: Iterable[Outcome], categories: Sequence[str] = CATEGORIES
) -> list[TableMiss]:
    """The false negatives and false positives of one corpus, in corpus order."""
    found = []
    for o in outcomes:
        if o.expected is None:
            expected: tuple[str, ...] = ("risky",) if o.risky else ()
            fn, fp = o.risky and not o.flagged, not o.risky and o.flagged
        else:
            expected = tuple(c for c in categories if c in o.expected)
            fn = (o.risky and not o.flagged) or any(c not in o.predicted for c in expected)
            fp = (not o.risky and o.flagged) or any(c not in o.expected for c in o.predicted)
        if fn or fp:
            kind = "FN+FP" if fn and fp else "FN" if fn else "FP"
            got = tuple(c for c in categories if c in o.predicted)
            found.append(TableMiss(o.file, kind, expected, got, o.risk, o.top))
    return found


def render_misses(corpus: str, found: Sequence[TableMiss], limit: int = 0) -> list[str]:
    """A heading and one line per miss (at most ``limit`` when it is above 0)."""
    fn = sum("FN" in m.kind for m in found)
    fp = sum("FP" in m.kind for m in found)
    lines = [f"{corpus}: {fn} false negatives, {fp} false positives"]
    shown = found if limit <= 0 else found[:limit]
    for m in shown:
        top = "-"
        if m.top is not None:
            rule, category, evidence = m.top
            top = (
                f'{rule} [{SHORT_NAMES.get(category, category)}] "{_shorten(evidence, TOP_WIDTH)}"'
            )
        expected = ",".join(SHORT_NAMES.get(c, c) for c in m.expected) or "-"
        got = ",".join(SHORT_NAMES.get(c, c) for c in m.got) or "-"
        lines.append(f"  {m.kind} {m.file}: expected {expected}; got {got} ({m.risk}); top {top}")
    if len(shown) < len(found):
        lines.append(f"  ... {len(found) - len(shown)} more (--misses-limit 0 shows all)")
    return lines
