"""Judge every corpus under a root once and build the corpus table (``eval --table``).

A root holds labelled corpora (a directory with ``labels.csv``: ``ROOT/NAME`` and
``ROOT/GROUP/NAME``, e.g. ``freelance-dev`` and ``writers/a``) and, optionally,
``public/ham``, ``public/risky/phishing_pot`` and ``public/risky``: plain directories read
as ``--all-ham`` and ``--all-risky``. Each corpus is cut into shards judged in ``jobs``
worker processes (the engine is CPU-bound); the outcomes come back in corpus order, so the
table and the miss lists are the same whatever the number of processes.

The figures are defined in :mod:`guard.evaluation.metrics`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.evaluation.labels import LABELS, LabelRow, LabelsError, parse_label_rows
from guard.evaluation.metrics import (
    CorpusRow,
    Outcome,
    corpus_row,
    outcome_from_verdict,
    summary_rows,
    table_misses,
)
from guard.evaluation.report import (
    render_misses,
    render_table,
    table_legend,
    table_to_dict,
)
from guard.evaluation.run import JudgeError, judge_message
from guard.mail.sources import SourceError, iter_sources, read_message_file
from guard.policy import load_rules

__all__ = ["Corpus", "TableRun", "discover", "judge_all", "run_table"]

# public/risky/phishing_pot (real phishing, the target of the phishing checks) also gets a
# row of its own: public/risky as a whole mixes it with commercial spam.
PUBLIC_CORPORA = (
    ("public/ham", "ham"),
    ("public/risky/phishing_pot", "risky"),
    ("public/risky", "risky"),
)


@dataclass(frozen=True, slots=True)
class Corpus:
    """One corpus under the root; ``assumed`` is ``labels``, ``ham`` or ``risky``."""

    name: str
    path: str
    assumed: str
    labels: tuple[LabelRow, ...] = ()

    @property
    def group(self) -> str:
        """``writers`` for ``writers/a``; empty for a corpus directly under the root."""
        return self.name.rpartition("/")[0]


@dataclass(slots=True)
class TableRun:
    """Everything the table needs: outcomes per corpus, and what went wrong."""

    corpora: list[Corpus]
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    read_errors: list[str] = field(default_factory=list)
    engine_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def discover(root: Path) -> tuple[list[Corpus], list[str]]:
    """The corpora under ``root`` in table order, and the labels files that are broken.

    Order: labelled corpora directly under the root, then those one level deeper (by
    name), then ``public/ham``, ``public/risky/phishing_pot`` and ``public/risky``.
    """
    found: list[Corpus] = []
    errors: list[str] = []
    labelled = sorted(p for p in root.glob(f"*/{LABELS}") if p.parent.name != "public")
    labelled += sorted(p for p in root.glob(f"*/*/{LABELS}") if p.parts[-3] != "public")
    for labels_path in labelled:
        name = labels_path.parent.relative_to(root).as_posix()
        try:
            text = labels_path.read_bytes().decode("utf-8-sig")
            rows = parse_label_rows(text, str(labels_path))
        except OSError as exc:
            errors.append(f"cannot read '{labels_path}': {exc.strerror or exc}")
            continue
        except UnicodeDecodeError:
            errors.append(f"labels file '{labels_path}': not UTF-8 text")
            continue
        except LabelsError as exc:
            errors.append(str(exc))
            continue
        found.append(Corpus(name, str(labels_path.parent), "labels", tuple(rows)))
    for name, assumed in PUBLIC_CORPORA:
        path = root / name
        if path.is_dir():
            found.append(Corpus(name, str(path), assumed))
    return found, errors


# --------------------------------------------------------------------------- judging

_ruleset: Any = None


def _init_worker(rule_files: Sequence[str]) -> None:
    global _ruleset
    _ruleset = load_rules(list(rule_files))


@dataclass(frozen=True, slots=True)
class _Shard:
    corpus: Corpus
    index: int
    count: int
    min_risk: str


def _judge_shard(
    shard: _Shard,
) -> tuple[list[tuple[int, Outcome]], list[str], list[str]]:
    """Outcomes of messages ``index, index + count, ...`` of one corpus, with their
    positions; read errors and engine errors as one-line messages."""
    corpus = shard.corpus
    done: list[tuple[int, Outcome]] = []
    read_errors: list[str] = []
    engine_errors: list[str] = []

    def judge(position: int, name: str, raw: bytes, row: LabelRow | None) -> None:
        try:
            verdict = judge_message(_ruleset, raw, f"{corpus.name}/{name}")
        except JudgeError as exc:  # a bug: name the message; the figures would be wrong
            engine_errors.append(str(exc))
            return
        if row is None:
            outcome = outcome_from_verdict(
                name, None, verdict, shard.min_risk, risky=corpus.assumed == "risky"
            )
        else:
            outcome = outcome_from_verdict(
                name, row.categories, verdict, shard.min_risk, tags=row.tags
            )
        done.append((position, outcome))

    if corpus.assumed == "labels":
        for position in range(shard.index, len(corpus.labels), shard.count):
            row = corpus.labels[position]
            try:
                raw = read_message_file(os.path.join(corpus.path, row.file))
            except SourceError as exc:
                read_errors.append(str(exc))
                continue
            judge(position, row.file, raw, row)
    else:
        sources = iter_sources([corpus.path], on_error=lambda exc: read_errors.append(str(exc)))
        for position, source in enumerate(sources):
            if position % shard.count == shard.index:
                judge(position, os.path.relpath(source.name, corpus.path), source.raw, None)
    if corpus.assumed != "labels" and shard.index != 0:
        read_errors = []  # every shard walks the directory: shard 0 reports its errors
    return done, read_errors, engine_errors


def judge_all(
    corpora: Sequence[Corpus],
    rule_files: Sequence[str] = (),
    min_risk: str = "low",
    jobs: int = 1,
) -> TableRun:
    """Judge every message of every corpus once, in ``jobs`` processes (1: in this one)."""
    run = TableRun(list(corpora))
    started = time.perf_counter()
    count = max(1, jobs)
    # The public corpora are the largest: hand them out first so the processes end together.
    ordered = sorted(corpora, key=lambda c: c.assumed == "labels")
    shards = [_Shard(c, i, count, min_risk) for c in ordered for i in range(count)]
    if count == 1:
        _init_worker(rule_files)
        results = [_judge_shard(s) for s in shards]
    else:
        with ProcessPoolExecutor(count, initializer=_init_worker, initargs=(rule_files,)) as pool:
            results = list(pool.map(_judge_shard, shards))
    collected: dict[str, list[tuple[int, Outcome]]] = {c.name: [] for c in corpora}
    for shard, (done, read_errors, engine_errors) in zip(shards, results, strict=True):
        collected[shard.corpus.name] += done
        run.read_errors += read_errors
        run.engine_errors += engine_errors
    for name, done in collected.items():
        run.outcomes[name] = [o for _, o in sorted(done, key=lambda p: p[0])]
    run.seconds = time.perf_counter() - started
    return run


# --------------------------------------------------------------------------- the table


def table_rows(run: TableRun) -> tuple[list[CorpusRow], list[CorpusRow]]:
    """The corpus rows, and the summary rows of each group of labelled corpora."""
    rows = [corpus_row(c.name, run.outcomes[c.name], c.assumed) for c in run.corpora]
    summaries: list[CorpusRow] = []
    groups: dict[str, list[Corpus]] = {}
    for c in run.corpora:
        if c.assumed == "labels" and c.group:
            groups.setdefault(c.group, []).append(c)
    by_name = {r.corpus: r for r in rows}
    for group, members in groups.items():
        pooled = [o for c in members for o in run.outcomes[c.name]]
        summaries += summary_rows(group, [by_name[c.name] for c in members], pooled)
    return rows, summaries


def run_table(
    root: Path,
    rule_files: Sequence[str] = (),
    min_risk: str = "low",
    jobs: int = 1,
    fmt: str = "text",
    misses: bool = False,
    misses_limit: int = 0,
) -> tuple[list[str] | dict[str, Any], list[str], int]:
    """``(lines or JSON data, error lines, exit status)`` of ``eval --table ROOT``.

    Status 0, or 2 when a labels file or a message could not be read, 1 when the engine
    failed on a message (its figures are then missing from the table).
    """
    corpora, errors = discover(root)
    if not corpora:
        message = f"no corpora under '{root}' (nothing to evaluate)"
        empty: list[str] | dict[str, Any] = [message]
        if fmt == "json":
            empty = {"min_risk": min_risk, "corpora": [], "summary": [], "note": message}
        return empty, errors, 2 if errors else 0
    run = judge_all(corpora, rule_files, min_risk, jobs)
    errors += run.read_errors + run.engine_errors
    status = 1 if run.engine_errors else 2 if errors else 0
    rows, summaries = table_rows(run)
    found = {c.name: table_misses(run.outcomes[c.name]) for c in corpora} if misses else None
    if fmt == "json":
        return table_to_dict(rows, summaries, min_risk, found), errors, status
    if fmt == "markdown":
        lines = render_table(rows, summaries, markdown=True)
    else:
        total = sum(len(o) for o in run.outcomes.values())
        lines = render_table(rows, summaries)
        lines += [
            "",
            *table_legend(min_risk),
            f"{total} messages in {len(corpora)} corpora judged in {run.seconds:.1f} s "
            f"({max(1, jobs)} process{'es' if jobs > 1 else ''}).",
        ]
    if found is not None:
        legend = "misses: FN/FP file: expected; got (risk); top = strongest finding [category]"
        lines += ["", legend]
        for name, corpus_misses in found.items():
            lines += ["", *render_misses(name, corpus_misses, misses_limit)]
    return lines, errors, status
