"""Rendering ``eval``'s figures: text lines, Markdown and JSON-ready data.

The labelled report (:func:`render_report`), the unlabelled one
(:func:`render_unlabelled`), the corpus table (:func:`render_table`,
:func:`table_legend`) and its miss lists
(:func:`render_misses`); ``*_to_dict`` give the same as JSON-ready data (figures rounded
to 4 places). Evidence is shortened to one line here; escaping for the terminal is the
command line's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guard.evaluation.metrics import (
    CorpusRow,
    Miss,
    Report,
    TableMiss,
    UnlabelledReport,
    recall_key,
)
from guard.policy import CATEGORIES

EVIDENCE_WIDTH = 80
SHORT_NAMES: dict[str, str] = {
    "off_platform_payment": "PAY",
    "off_platform_contact": "CON",
    "contact_request": "REQ",
    "personal_data": "PD",
    "scam": "SC",
    "phishing": "PH",
    "dispute": "DIS",
}
TOP_WIDTH = 60


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


def _fields(report: Report | UnlabelledReport, *names: str) -> dict[str, Any]:
    """The report's ``names`` as they are, in that order (the JSON keys' order)."""
    return {name: getattr(report, name) for name in names}


def _evidence(evidence: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """An outcome's or a miss's evidence per category, as JSON-ready data."""
    return {c: {"rule": r, "evidence": e} for c, (r, e) in evidence.items()}


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data."""
    data: dict[str, Any] = {
        **_fields(report, "corpus", "min_risk", "messages", "ham", "risky"),
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
                "evidence": _evidence(m.evidence),
            }
            for m in report.misses
        ],
    }
    return data


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
        **_fields(report, "corpus", "assumed", "min_risk", "messages"),
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
                "evidence": _evidence(o.evidence),
            }
            for o in report.flagged
        ],
    }
    return data


# --------------------------------------------------------------------------- corpus table


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
        *((recall_key(c), SHORT_NAMES.get(c, c[:4].upper()), 4) for c in categories),
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
    *,
    markdown: bool = False,
) -> list[str]:
    """The table, one string per line: fixed-width (corpus rows, a rule, summary rows), or
    with ``markdown`` a Markdown (GitHub) table whose summary rows are in italics."""
    headers = _headers(categories)
    if markdown:
        return _markdown_table(headers, rows, summaries, categories)
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


def _markdown_table(
    headers: Sequence[tuple[str, str, int]],
    rows: Sequence[CorpusRow],
    summaries: Sequence[CorpusRow],
    categories: Sequence[str],
) -> list[str]:
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
