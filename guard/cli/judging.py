"""``check`` (verdicts for message files) and ``eval`` (figures on labelled corpora)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from guard.cli.common import (
    RISK_STYLE,
    Format,
    Level,
    app,
    error,
    fail,
    indented,
    rules_or_fail,
)
from guard.reports import clean, json_line

# --------------------------------------------------------------------------- check

# ``--rules``, the same option for ``check`` and ``eval``.
RulesOption = Annotated[
    list[Path] | None,
    typer.Option("--rules", metavar="FILE", help="Extra rules file (TOML); repeatable."),
]


def _message_record(name: str, msg: Any, verdict: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source": name,
        "message_id": msg.message_id,
        "subject": msg.subject,
        "risk": verdict.risk,
        "score": verdict.score,
        "categories": list(verdict.categories),
        "findings": [f.to_dict() for f in verdict.findings],
    }
    if msg.defects:
        record["defects"] = list(msg.defects)
    return record


def _paragraphs(text: str) -> str:
    """Reflow hard-wrapped text (rich wraps it again); blank lines separate paragraphs."""
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return "\n".join(clean(p) for p in paras if p)


def _text_block(name: str, msg: Any, verdict: Any) -> Group:
    risk_style = RISK_STYLE.get(verdict.risk, "")
    head = Table.grid(padding=(0, 1))
    head.add_column(style="dim", no_wrap=True)
    head.add_column()
    head.add_row("subject", Text(clean(msg.subject) or "(no subject)"))
    risk = Text()
    risk.append(verdict.risk.upper(), style=risk_style)
    risk.append(f"  score {verdict.score:g}")
    if verdict.categories:
        risk.append("  " + ", ".join(verdict.categories))
    head.add_row("risk", risk)
    if msg.defects:
        head.add_row("defects", Text(clean("; ".join(msg.defects))))

    parts: list[Any] = [Text(clean(name), style="bold"), Padding(head, (0, 0, 0, 2))]
    for f in verdict.findings:
        counted = f.category in verdict.categories
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        title = Text()
        title.append(clean(f.category), style="bold" if counted else "dim")
        title.append(f"  {clean(f.rule)}  {f.score:+g}  in {clean(f.where)}", style="dim")
        grid.add_row("•", title)
        grid.add_row("", Text("“" + clean(f.evidence) + "”", style="italic"))
        if f.explanation:
            grid.add_row("", Text(_paragraphs(f.explanation)))
        parts.append(Padding(grid, (0, 0, 0, 2)))
    parts.append(Text(""))
    return Group(*parts)


@app.command()
def check(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH",
            help="Message files (.eml), directories (searched for .eml and Maildir "
            "cur/new files), mbox files, or - for standard input.",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="text or json (JSON Lines).")
    ] = Format.text,
    rules: RulesOption = None,
    min_risk: Annotated[
        Level, typer.Option("--min-risk", help="Only print messages at or above this risk.")
    ] = Level.none,
) -> None:
    """Check message files and print a verdict for each message."""
    from guard.mail import parse_message
    from guard.mail.sources import SourceError, iter_sources
    from guard.policy import evaluate, level_at_least

    ruleset = rules_or_fail(rules or [])
    read_errors = 0
    engine_errors = 0
    counts = {lvl.value: 0 for lvl in Level}

    def on_error(exc: SourceError) -> None:
        nonlocal read_errors
        read_errors += 1
        error(str(exc))

    out = sys.stdout
    console = Console(file=out, highlight=False, emoji=False, markup=False)
    for source in iter_sources(paths, on_error=on_error):
        try:
            msg = parse_message(source.raw)
            verdict = evaluate(ruleset, msg)
        except Exception as exc:  # a bug in the engine must not hide the other messages
            engine_errors += 1
            error(f"'{source.name}': internal error: {type(exc).__name__}: {exc}")
            continue
        counts[verdict.risk] = counts.get(verdict.risk, 0) + 1
        if not level_at_least(verdict.risk, min_risk.value):
            continue
        if fmt is Format.json:
            out.write(json_line(_message_record(source.name, msg, verdict)) + "\n")
        else:
            with console.capture() as captured:
                console.print(_text_block(source.name, msg, verdict))
            # rich pads table cells to the full width: drop the trailing blanks
            out.write("\n".join(line.rstrip(" ") for line in captured.get().split("\n")))
        out.flush()

    if fmt is Format.text:
        total = sum(counts.values())
        summary = ", ".join(f"{n} {lvl}" for lvl, n in reversed(counts.items()) if n)
        console.print(Text(f"{total} message{'s' if total != 1 else ''} checked: {summary or '-'}"))
        out.flush()
    if read_errors:
        raise typer.Exit(2)
    if engine_errors:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- eval


class EvalFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


@app.command(name="eval")
def eval_command(
    corpus: Annotated[
        Path,
        typer.Argument(
            metavar="CORPUS_DIR",
            help="A directory with labels.csv (file,categories,notes) and the messages; "
            "with --table, a root of corpora.",
            show_default=False,
        ),
    ],
    rules: RulesOption = None,
    min_risk: Annotated[
        Level, typer.Option("--min-risk", help="A message counts as flagged at this risk.")
    ] = Level.low,
    fmt: Annotated[
        EvalFormat, typer.Option("--format", "-f", help="text, json or markdown (--table).")
    ] = EvalFormat.text,
    all_ham: Annotated[
        bool, typer.Option("--all-ham", help="No labels: every message found is ham.")
    ] = False,
    all_risky: Annotated[
        bool, typer.Option("--all-risky", help="No labels: every message found is risky.")
    ] = False,
    table: Annotated[
        bool,
        typer.Option(
            "--table",
            help="CORPUS_DIR is a root: one table of every corpus under it (*/labels.csv, "
            "*/*/labels.csv, public/ham as --all-ham, public/risky as --all-risky).",
        ),
    ] = False,
    list_misses: Annotated[
        bool, typer.Option("--misses", help="--table: list each corpus's FN and FP messages.")
    ] = False,
    misses_limit: Annotated[
        int, typer.Option("--misses-limit", min=0, help="--misses: per corpus; 0 = all.")
    ] = 100,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="--table: worker processes.")
    ] = min(2, os.cpu_count() or 1),
) -> None:
    """Measure the rules on a corpus: per-category precision/recall/F1, flag rates, misses."""
    from guard import evaluation as ev

    if all_ham and all_risky:
        fail("--all-ham and --all-risky cannot be used together")
    if table:
        if all_ham or all_risky:
            fail("--table reads public/ham and public/risky by itself: drop --all-ham/--all-risky")
        _eval_table(corpus, rules or [], min_risk.value, fmt, list_misses, misses_limit, jobs)
        return
    if fmt is EvalFormat.markdown:
        fail("--format markdown needs --table")
    try:
        labels = ev.read_corpus(corpus, labelled=not (all_ham or all_risky))
    except (ev.CorpusError, ev.LabelsError) as exc:
        fail(str(exc))
    ruleset = rules_or_fail(rules or [])
    try:
        result = ev.judge_corpus(
            corpus, ruleset, min_risk.value, labels, all_risky=all_risky, on_error=error
        )
    except ev.CorpusError as exc:
        fail(str(exc))
    except ev.JudgeError as exc:
        fail(str(exc), code=1)
    if fmt is EvalFormat.json:
        sys.stdout.write(json_line(result.data) + "\n")
    else:
        sys.stdout.write("".join(indented(line) + "\n" for line in result.lines))
    sys.stdout.flush()
    if result.read_errors:
        raise typer.Exit(2)


def _eval_table(
    root: Path,
    rules: Sequence[Path],
    level: str,
    fmt: EvalFormat,
    list_misses: bool,
    misses_limit: int,
    jobs: int,
) -> None:
    """``eval --table``: one line and status 0 when the root is absent (it is optional)."""
    from guard.evaluation import run_table

    if not root.exists():
        sys.stdout.write(clean(f"corpus root '{root}' is absent: nothing to evaluate") + "\n")
        return
    if not root.is_dir():
        fail(f"corpus root '{root}': not a directory")
    rules_or_fail(rules)  # a bad rules file fails here, once, not in every worker
    output, errors, status = run_table(
        root, [str(r) for r in rules], level, jobs, fmt.value, list_misses, misses_limit
    )
    if isinstance(output, dict):
        sys.stdout.write(json_line(output) + "\n")
    else:
        sys.stdout.write("".join(indented(line) + "\n" for line in output))
    sys.stdout.flush()
    for message in errors:
        error(message)
    if status:
        raise typer.Exit(status)
