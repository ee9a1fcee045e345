"""The figures of ``eval``: outcomes of the engine on a corpus, and what they add up to.

Pure functions over plain data: each verdict becomes an :class:`Outcome`
(:func:`outcome_from_verdict`); a labelled corpus adds up to a :class:`Report`, an
unlabelled one to an :class:`UnlabelledReport`, a corpus of the table to a
:class:`CorpusRow`. Definitions used throughout:

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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from guard.evaluation.labels import OBFUSCATED, is_non_english
from guard.policy import CATEGORIES, Verdict, level_at_least

RATE_KEYS = ("risky_recall", "ham_flag_rate", "obfuscated_recall", "non_english_recall")


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


# ------------------------------------------------------------------------- reports


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


# --------------------------------------------------------------------------- corpus table


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


def recall_key(category: str) -> str:
    """The column of ``category``'s recall."""
    return f"recall.{category}"


def column_keys(categories: Sequence[str] = CATEGORIES) -> list[str]:
    """Every figure column of the table, in order."""
    return ["macro_f1", *RATE_KEYS, *(recall_key(c) for c in categories)]


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
            counts[recall_key(c)] = (s.tp, s.support)
    values.update({k: ratio(*n) for k, n in counts.items()})
    for c in categories:
        values.setdefault(recall_key(c), None)
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
