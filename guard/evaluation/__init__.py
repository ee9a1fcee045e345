"""Measuring the policy engine on labelled corpora (``inbox-guard eval``, ``make eval``).

Owns reading a corpus and its ``labels.csv``, judging its messages, and the figures that
follow: per-category precision, recall and F1, macro-F1, risky recall, ham flag rate,
and the table of every corpus under a root. Where each concern lives:

- ``labels``: ``labels.csv`` rows and the tags of their notes (:func:`note_tags`,
  :func:`prose_tags`).
- ``metrics``: outcomes (:func:`outcome_from_verdict`) and what they add up to (reports,
  table rows, misses); the definitions of the figures are in its docstring.
- ``report``: text, Markdown and JSON-ready renderings of those figures.
- ``run``: ``eval CORPUS_DIR``, one corpus judged and added up (:func:`judge_corpus`).
- ``corpora``: ``eval --table ROOT``, every corpus under a root judged in worker
  processes (:func:`run_table`).

May import only ``guard.errors``, ``guard.mail`` and ``guard.policy`` (checked by
``tests/unit/test_layers.py``). Other packages import from ``guard.evaluation`` (the names
below), not from its modules.
"""

from guard.evaluation.corpora import Corpus, TableRun, discover, judge_all, run_table
from guard.evaluation.labels import (
    LabelRow,
    LabelsError,
    is_non_english,
    note_tags,
    parse_label_rows,
    parse_labels,
    prose_tags,
)
from guard.evaluation.metrics import (
    CategoryStats,
    CorpusRow,
    Miss,
    Outcome,
    Report,
    TableMiss,
    UnlabelledReport,
    category_stats,
    column_keys,
    corpus_row,
    f1_score,
    macro_f1,
    misses,
    outcome_from_verdict,
    ratio,
    summarize,
    summarize_unlabelled,
    summary_rows,
    table_misses,
)
from guard.evaluation.report import (
    render_misses,
    render_report,
    render_table,
    render_unlabelled,
    report_to_dict,
    table_legend,
    table_to_dict,
    unlabelled_to_dict,
)
from guard.evaluation.run import (
    CorpusError,
    CorpusEval,
    JudgeError,
    judge_corpus,
    judge_message,
    read_corpus,
)

__all__ = [
    "CategoryStats",
    "Corpus",
    "CorpusError",
    "CorpusEval",
    "CorpusRow",
    "JudgeError",
    "LabelRow",
    "LabelsError",
    "Miss",
    "Outcome",
    "Report",
    "TableMiss",
    "TableRun",
    "UnlabelledReport",
    "category_stats",
    "column_keys",
    "corpus_row",
    "discover",
    "f1_score",
    "is_non_english",
    "judge_all",
    "judge_corpus",
    "judge_message",
    "macro_f1",
    "misses",
    "note_tags",
    "outcome_from_verdict",
    "parse_label_rows",
    "parse_labels",
    "prose_tags",
    "ratio",
    "read_corpus",
    "render_misses",
    "render_report",
    "render_table",
    "render_unlabelled",
    "report_to_dict",
    "run_table",
    "summarize",
    "summarize_unlabelled",
    "summary_rows",
    "table_legend",
    "table_misses",
    "table_to_dict",
    "unlabelled_to_dict",
]
