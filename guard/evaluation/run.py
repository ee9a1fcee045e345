"""Judging one corpus directory (``inbox-guard eval CORPUS_DIR``).

Reads the corpus (``labels.csv`` and the files it names, or every message of a plain
directory with ``--all-ham`` / ``--all-risky``), runs the engine on each message and adds
the outcomes up into the report's lines and JSON data. The command line only parses the
options, loads the rules and prints. The table of every corpus under a root
(``eval --table``) is ``corpora.py``'s; it judges its messages with :func:`judge_message`
too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import GuardError, Kind
from guard.evaluation.labels import LABELS, parse_labels
from guard.evaluation.metrics import (
    Outcome,
    outcome_from_verdict,
    summarize,
    summarize_unlabelled,
)
from guard.evaluation.report import (
    render_report,
    render_unlabelled,
    report_to_dict,
    unlabelled_to_dict,
)
from guard.mail import parse_message
from guard.mail.sources import SourceError, iter_sources, read_message_file
from guard.policy import RuleSet, Verdict, evaluate


class CorpusError(GuardError):
    """The corpus, its ``labels.csv`` or a message it lists cannot be read."""

    kind = Kind.INPUT


class JudgeError(GuardError):
    """The engine failed on a message (a bug): the figures would be wrong."""

    kind = Kind.SCAN


@dataclass(frozen=True, slots=True)
class CorpusEval:
    """What ``eval CORPUS_DIR`` prints: text lines, JSON data, and how many files of a
    plain directory could not be read (each was reported as it was met)."""

    lines: list[str]
    data: dict[str, Any]
    read_errors: int


def judge_message(rules: RuleSet, raw: bytes, name: str) -> Verdict:
    """The verdict on one message; an engine failure names the message."""
    try:
        return evaluate(rules, parse_message(raw))
    except Exception as exc:  # a bug: name the message, metrics would be wrong
        raise JudgeError(f"'{name}': internal error: {type(exc).__name__}: {exc}") from None


def read_corpus(corpus: Path, labelled: bool) -> list[tuple[str, frozenset[str]]] | None:
    """``(file, categories)`` of a labelled corpus; None for a plain directory.

    Raises :class:`CorpusError` when ``corpus`` is not a directory or has no readable
    ``labels.csv``, and :class:`~guard.evaluation.labels.LabelsError` when it is malformed.
    """
    if not corpus.is_dir():
        reason = "not a directory" if corpus.exists() else "No such file or directory"
        raise CorpusError(f"cannot read '{corpus}': {reason}")
    labels_path = corpus / LABELS
    if labelled and not labels_path.is_file():
        raise CorpusError(
            f"no labels.csv in '{corpus}' (use --all-ham or --all-risky for a plain directory)"
        )
    if not labelled:
        return None
    try:
        return parse_labels(read_message_file(labels_path).decode("utf-8-sig"), str(labels_path))
    except SourceError as exc:
        raise CorpusError(str(exc)) from None
    except UnicodeDecodeError:
        raise CorpusError(f"labels file '{labels_path}': not UTF-8 text") from None


def judge_corpus(
    corpus: Path,
    rules: RuleSet,
    min_risk: str,
    labels: list[tuple[str, frozenset[str]]] | None,
    *,
    all_risky: bool = False,
    on_error: Callable[[str], None],
) -> CorpusEval:
    """Judge every message of ``corpus`` and add the outcomes up.

    ``labels`` from :func:`read_corpus`, or None for a plain directory whose messages are
    all ham (or all risky: ``all_risky``). A file of a plain directory that cannot be read
    is passed to ``on_error`` and left out; one that ``labels`` lists raises
    :class:`CorpusError`. An engine failure raises :class:`JudgeError`.
    """
    outcomes: list[Outcome] = []
    read_errors = 0

    def skip(exc: SourceError) -> None:
        nonlocal read_errors
        read_errors += 1
        on_error(str(exc))

    if labels is None:
        for source in iter_sources([corpus], on_error=skip):
            name = os.path.relpath(source.name, corpus)
            verdict = judge_message(rules, source.raw, name)
            outcomes.append(outcome_from_verdict(name, None, verdict, min_risk, risky=all_risky))
        unlabelled = summarize_unlabelled(
            outcomes, str(corpus), "risky" if all_risky else "ham", min_risk
        )
        return CorpusEval(
            render_unlabelled(unlabelled), unlabelled_to_dict(unlabelled), read_errors
        )
    for file, expected in labels:
        try:
            raw = read_message_file(corpus / file)
        except SourceError as exc:
            raise CorpusError(str(exc)) from None
        verdict = judge_message(rules, raw, file)
        outcomes.append(outcome_from_verdict(file, expected, verdict, min_risk))
    report = summarize(outcomes, str(corpus), min_risk)
    return CorpusEval(render_report(report), report_to_dict(report), read_errors)
