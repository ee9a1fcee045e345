"""The ``inbox-guard`` command line.

Commands: ``check`` (verdicts for message files, text or JSON Lines), ``eval``
(precision/recall of the rules on a labelled corpus), ``scan`` (one poll cycle of the
mailbox), ``findings`` (what the store holds), ``run`` (the service), ``digest``,
``doctor`` (checks every link), ``export`` / ``verify`` (dispute evidence bundles).
The commands only parse arguments and print; the work is in the modules they call.

Exit status: 0 on success, 1 when the work failed (a server, the store, an engine bug), 2
on bad input, configuration or usage, with a one-line ``inbox-guard: error: ...`` on
stderr naming what was wrong.
Everything a message contains is untrusted: it never reaches rich markup, and control,
format (bidi, zero-width) and other invisible characters are shown as escapes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from guard import __version__
from guard.errors import GuardError, Kind

PROG = "inbox-guard"

# Usage errors raised by the parser: typer >= 0.2x vendors click and its exceptions derive
# from typer.TyperException; older typer uses click itself.
_USAGE_ERRORS: tuple[type[Exception], ...] = (typer.TyperException,)
try:  # pragma: no cover - depends on the installed typer
    import click

    _USAGE_ERRORS += (click.ClickException,)
except ImportError:  # pragma: no cover
    pass


class Format(StrEnum):
    text = "text"
    json = "json"


class Level(StrEnum):
    none = "none"
    low = "low"
    medium = "medium"
    high = "high"


app = typer.Typer(
    name=PROG,
    help="Guards a freelancer's work mailbox: off-platform requests, scams, phishing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Fail(GuardError):
    """A one-line error for the user; ends the command with ``code`` (2: input or usage)."""

    kind = Kind.USAGE

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- output safety

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_SPACES = re.compile(" {2,}")
_JSON_UNSAFE = re.compile(
    "[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
    "\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]"
)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(text: str, *, multiline: bool = False) -> str:
    """Text safe to show on a terminal: no control or invisible characters.

    Tabs, other spaces and (unless ``multiline``) line breaks become one space; control
    characters (ANSI escapes), bidi overrides, zero-width and other format characters,
    surrogates and unassigned code points are shown as ``\\x1b`` / ``\\u202e`` escapes.
    """
    if text.isascii() and not _NOT_PRINTABLE.search(text):
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch == "\n" and multiline:
            out.append("\n")
        elif ch in "\t\r\n\v\f" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        else:
            out.append(_escape_char(ch))
    result = "".join(out)
    return result if multiline else _SPACES.sub(" ", result).strip()


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells astral characters as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(obj: Any) -> str:
    """Compact JSON that keeps letters readable but escapes anything a terminal acts on.

    ``json.dumps`` already escapes C0 controls; DEL, C1 controls (``\\x9b`` is CSI on
    some terminals), bidi and zero-width characters, line separators, lone surrogates
    and Unicode tag characters are escaped here too. The decoded value is unchanged.
    """
    return _JSON_UNSAFE.sub(_json_escape, json.dumps(obj, ensure_ascii=False))


def _indented(line: str) -> str:
    """:func:`clean` for one report line, keeping its indentation."""
    body = line.lstrip(" ")
    return " " * (len(line) - len(body)) + clean(body)


def error(message: str) -> None:
    """One line on stderr: ``inbox-guard: error: <message>``."""
    sys.stderr.write(f"{PROG}: error: {clean(message)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    raise Fail(message, code)


# --------------------------------------------------------------------------- shared helpers


def _load_rules(rules: Sequence[Path]) -> Any:
    from guard.policy import RulesError, load_rules

    try:
        return load_rules(list(rules))
    except RulesError as exc:
        message = str(exc)
        for path in map(str, rules):  # "x.toml: rule ..." -> "rules file 'x.toml': rule ..."
            if message.startswith(f"{path}: "):
                message = f"rules file '{path}': {message[len(path) + 2 :]}"
                break
        fail(message if "rules" in message else f"rules: {message}")
    except OSError as exc:  # the engine should wrap these; be safe anyway
        fail(f"rules file '{exc.filename}': {exc.strerror or exc}")


_RISK_STYLE = {"none": "green", "low": "yellow", "medium": "dark_orange", "high": "bold red"}


# --------------------------------------------------------------------------- app callback


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Guards a freelancer's work mailbox: off-platform requests, scams, phishing."""


# --------------------------------------------------------------------------- check


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
    risk_style = _RISK_STYLE.get(verdict.risk, "")
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
    rules: Annotated[
        list[Path] | None,
        typer.Option("--rules", metavar="FILE", help="Extra rules file (TOML); repeatable."),
    ] = None,
    min_risk: Annotated[
        Level, typer.Option("--min-risk", help="Only print messages at or above this risk.")
    ] = Level.none,
) -> None:
    """Check message files and print a verdict for each message."""
    from guard.mail.message import parse_message
    from guard.mail.sources import SourceError, iter_sources
    from guard.policy import evaluate, level_at_least

    ruleset = _load_rules(rules or [])
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
    rules: Annotated[
        list[Path] | None,
        typer.Option("--rules", metavar="FILE", help="Extra rules file (TOML); repeatable."),
    ] = None,
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
    from guard.mail.message import parse_message
    from guard.mail.sources import SourceError, iter_sources, read_message_file
    from guard.policy import evaluate

    if all_ham and all_risky:
        fail("--all-ham and --all-risky cannot be used together")
    if table:
        if all_ham or all_risky:
            fail("--table reads public/ham and public/risky by itself: drop --all-ham/--all-risky")
        _eval_table(corpus, rules or [], min_risk.value, fmt, list_misses, misses_limit, jobs)
        return
    if fmt is EvalFormat.markdown:
        fail("--format markdown needs --table")
    if not corpus.is_dir():
        reason = "not a directory" if corpus.exists() else "No such file or directory"
        fail(f"cannot read '{corpus}': {reason}")
    labels_path = corpus / "labels.csv"
    unlabelled = all_ham or all_risky
    if not unlabelled and not labels_path.is_file():
        fail(f"no labels.csv in '{corpus}' (use --all-ham or --all-risky for a plain directory)")
    labels: list[tuple[str, frozenset[str]]] = []
    if not unlabelled:
        try:
            labels = ev.parse_labels(
                read_message_file(labels_path).decode("utf-8-sig"), str(labels_path)
            )
        except (SourceError, ev.LabelsError) as exc:
            fail(str(exc))
        except UnicodeDecodeError:
            fail(f"labels file '{labels_path}': not UTF-8 text")

    ruleset = _load_rules(rules or [])
    level = min_risk.value
    outcomes: list[ev.Outcome] = []
    read_errors = 0

    def on_error(exc: SourceError) -> None:
        nonlocal read_errors
        read_errors += 1
        error(str(exc))

    def verdict_for(raw: bytes, name: str) -> Any:
        try:
            return evaluate(ruleset, parse_message(raw))
        except Exception as exc:  # a bug: name the message, metrics would be wrong
            fail(f"'{name}': internal error: {type(exc).__name__}: {exc}", code=1)

    if unlabelled:
        for source in iter_sources([corpus], on_error=on_error):
            name = os.path.relpath(source.name, corpus)
            verdict = verdict_for(source.raw, name)
            outcomes.append(ev.outcome_from_verdict(name, None, verdict, level, risky=all_risky))
        report = ev.summarize_unlabelled(
            outcomes, str(corpus), "risky" if all_risky else "ham", level
        )
        data = ev.unlabelled_to_dict(report)
        lines = ev.render_unlabelled(report)
    else:
        for file, expected in labels:
            try:
                raw = read_message_file(corpus / file)
            except SourceError as exc:
                fail(str(exc))
            verdict = verdict_for(raw, file)
            outcomes.append(ev.outcome_from_verdict(file, expected, verdict, level))
        labelled = ev.summarize(outcomes, str(corpus), level)
        data = ev.report_to_dict(labelled)
        lines = ev.render_report(labelled)

    if fmt is EvalFormat.json:
        sys.stdout.write(json_line(data) + "\n")
    else:
        sys.stdout.write("".join(_indented(line) + "\n" for line in lines))
    sys.stdout.flush()
    if read_errors:
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
    from guard.evaluation.corpora import run_table

    if not root.exists():
        sys.stdout.write(clean(f"corpus root '{root}' is absent: nothing to evaluate") + "\n")
        return
    if not root.is_dir():
        fail(f"corpus root '{root}': not a directory")
    _load_rules(rules)  # a bad rules file fails here, once, not in every worker
    output, errors, status = run_table(
        root, [str(r) for r in rules], level, jobs, fmt.value, list_misses, misses_limit
    )
    if isinstance(output, dict):
        sys.stdout.write(json_line(output) + "\n")
    else:
        sys.stdout.write("".join(_indented(line) + "\n" for line in output))
    sys.stdout.flush()
    for message in errors:
        error(message)
    if status:
        raise typer.Exit(status)


# --------------------------------------------------------------------------- scan


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Configuration file (default: $INBOX_GUARD_CONFIG, "
        "$XDG_CONFIG_HOME/inbox-guard/config.toml, /etc/inbox-guard/config.toml).",
    ),
]


def _load_config(path: Path | None) -> Any:
    from guard.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def _open_store(config: Any) -> Any:
    from guard.store import Store, StoreError

    try:
        return Store(config.store.url)
    except StoreError as exc:
        fail(str(exc), 1)


def _quiet_libraries() -> None:
    import logging

    # mail-parser logs hostile header values at ERROR level; they are attacker text.
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)


def _setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("imapclient").setLevel(logging.WARNING)
    _quiet_libraries()


@app.command()
def scan(
    config_path: ConfigOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Fetch and judge, print what would be labelled, change nothing."
        ),
    ] = False,
    folder: Annotated[
        str | None, typer.Option("--folder", metavar="NAME", help="Scan only this folder.")
    ] = None,
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="text or json (one summary object).")
    ] = Format.text,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
    account: Annotated[
        str | None,
        typer.Option("--account", metavar="NAME", help="Only this [[account]] (default: all)."),
    ] = None,
) -> None:
    """Run one poll cycle over the configured folders: fetch new mail, judge, label.

    With several [[account]] blocks each mailbox is scanned in turn; --format json then
    prints one summary object per line, each with its "account"."""
    from guard.config import ConfigError
    from guard.service.scan import ScanError, ScanSettings
    from guard.service.scan import scan as run_scan

    _setup_logging(verbose)
    config = _load_config(config_path)
    ruleset = _load_rules(list(config.policy.rules))
    try:
        names = (
            [config.account_named(account).name] if account else [a.name for a in config.accounts]
        )
    except ConfigError as exc:
        fail(str(exc))
    several = len(config.accounts) > 1
    store = _open_store(config)
    progress = None
    bar = None
    if fmt is Format.text and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if total < 50:  # a progress bar is for the big first scan only
                return
            if name not in tasks:
                tasks[name] = bar.add_task(clean(name), total=total)
            bar.update(tasks[name], completed=done)

        bar.start()
    failures: list[tuple[str, ScanError]] = []
    try:
        for name in names:
            try:
                summary = run_scan(
                    ScanSettings.from_config(config, name),
                    store,
                    ruleset,
                    dry_run=dry_run,
                    only_folder=folder,
                    progress=progress,
                )
            except ScanError as exc:  # one failing mailbox does not stop the others
                failures.append((name, exc))
                continue
            if bar is not None and name == names[-1]:
                bar.stop()
            record = summary.to_dict()
            if several:
                record = {"account": name, **record}
            if fmt is Format.json:
                sys.stdout.write(json_line(record) + "\n")
            else:
                if several:
                    sys.stdout.write(f"[{clean(name)}]\n")
                _print_scan_summary(summary)
            sys.stdout.flush()
    finally:
        if bar is not None:
            bar.stop()
        store.close()
    for name, problem in failures:
        who = f"[{name}] " if several else ""
        error(f"{who}scan failed: {problem}")
    if failures:
        config_only = all(problem.kind == "config" for _n, problem in failures)
        raise typer.Exit(2 if config_only else 1)


def _print_scan_summary(summary: Any) -> None:
    out = sys.stdout
    for name, fs in summary.folders.items():
        state = "unchanged" if fs.unchanged else f"{fs.new_messages} new, {fs.risky} risky"
        if fs.uidvalidity_reset:
            state += " (UIDVALIDITY changed: folder re-read)"
        out.write(f"{clean(name)}: {state}\n")
    verb = "would label" if summary.dry_run else "labelled"
    out.write(
        f"{summary.new_messages} new message(s), {summary.risky} risky, "
        f"{summary.labelled} {verb} (labels: {summary.label_mode})\n"
    )
    for p in summary.planned:
        labels = ", ".join(x.partition(":")[2] + f" ({x.partition(':')[0]})" for x in p.labels)
        out.write(
            f"  {clean(p.folder)} uid {p.uid} [{p.risk}] {clean(p.sender)}: "
            f"{clean(p.subject)[:80]}\n    -> {clean(labels)}\n"
        )


# --------------------------------------------------------------------------- run


@app.command()
def run(
    config_path: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run as a service: scan every poll interval, send the daily digest."""
    from guard.service.daemon import run as run_daemon

    raise typer.Exit(run_daemon(config_path, verbose))


# --------------------------------------------------------------------------- doctor


@app.command()
def doctor(config_path: ConfigOption = None) -> None:
    """Check config, secrets, DNS, TLS, login, folders, labels, database and SMTP.

    One line per check, with a hint for each failure; exit 1 if any failed."""
    from guard.service.doctor import run_checks

    _quiet_libraries()
    failed = 0
    out = sys.stdout
    for check in run_checks(config_path):
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[check.ok]
        out.write(f"{mark} {check.name}: {clean(check.detail)}\n")
        if check.ok is False:
            failed += 1
            if check.hint:
                out.write(f"     hint: {clean(check.hint)}\n")
        out.flush()
    if failed:
        out.write(f"{failed} check(s) failed\n")
        raise typer.Exit(1)
    out.write("all checks passed\n")


# --------------------------------------------------------------------------- digest


@app.command()
def digest(
    config_path: ConfigOption = None,
    send: Annotated[
        bool,
        typer.Option("--send", help="Build today's digest, store it and send what is pending."),
    ] = False,
    preview: Annotated[
        bool, typer.Option("--preview", help="Print the digest without storing or sending it.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="DATE", help="Preview from DATE (or 7d, 12h) instead of the last."
        ),
    ] = None,
    html: Annotated[bool, typer.Option("--html", help="Print the HTML part instead.")] = False,
) -> None:
    """Print the digest of what was found since the last one, or send it."""
    from guard.reports import digest as dg
    from guard.store import StoreError

    if send and (preview or since):
        fail("--send cannot be combined with --preview or --since")
    config = _load_config(config_path)
    store = _open_store(config)
    try:
        if send:
            if config.digest is None or config.smtp is None:
                fail("--send needs [digest] and [smtp] in the configuration")
            outcome = dg.run_digest(store, config)
            sys.stdout.write(clean(str(outcome)) + "\n")
            if not outcome.ok:
                raise typer.Exit(1)
            return
        rendered = dg.preview(store, config, since=_parse_since(since))
        sys.stdout.write(f"Subject: {clean(rendered.subject)}\n\n")
        sys.stdout.write(rendered.html if html else clean(rendered.text, multiline=True))
        sys.stdout.write("\n")
    except dg.DigestError as exc:
        fail(str(exc), 1)
    except StoreError as exc:
        fail(str(exc), 1)
    finally:
        store.close()


# --------------------------------------------------------------------------- findings


def _parse_since(value: str | None) -> Any:
    from datetime import UTC, datetime, timedelta

    if value is None:
        return None
    m = re.fullmatch(r"(\d+)\s*([dhw])", value.strip())
    if m:
        n = int(m.group(1))
        delta = {"d": timedelta(days=n), "h": timedelta(hours=n), "w": timedelta(weeks=n)}
        return datetime.now(UTC).replace(tzinfo=None) - delta[m.group(2)]
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"--since: expected a date like 2026-11-01, a time, or 7d / 12h (got {value!r})")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _iso(value: Any) -> str | None:
    from guard.store import iso_z

    return iso_z(value)


@app.command()
def findings(
    config_path: ConfigOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="DATE", help="Only threads active since DATE (or 7d, 12h)."
        ),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="text or json (JSON Lines).")] = (
        Format.text
    ),
    all_levels: Annotated[
        bool, typer.Option("--all", help="Include threads below the labelling level.")
    ] = False,
) -> None:
    """List the flagged threads the store holds, riskiest first."""
    from guard import store as st
    from guard.policy import LEVELS, level_at_least

    config = _load_config(config_path)
    since_dt = _parse_since(since)
    minimum = "low" if all_levels else config.policy.min_risk
    levels = [lvl for lvl in LEVELS[1:] if level_at_least(lvl, minimum)]
    store = _open_store(config)
    out = sys.stdout
    try:
        with store.session() as session:
            threads = st.threads_since(session, None, since_dt, levels)
            for thread in threads:
                members = st.thread_messages(session, thread.account, thread.thread_id)
                found = st.findings_for(session, [m.id for m in members if m.id is not None])
                record = _thread_record(thread, members, found)
                if fmt is Format.json:
                    out.write(json_line(record) + "\n")
                else:
                    _print_thread(record)
    except st.StoreError as exc:
        fail(str(exc), 1)
    finally:
        store.close()
    if fmt is Format.text:
        out.write(f"{len(threads)} thread(s) flagged\n")


def _thread_record(thread: Any, members: list[Any], found: dict[int, list[Any]]) -> dict[str, Any]:
    return {
        "account": thread.account,
        "thread": thread.thread_id,
        "risk": thread.risk,
        "score": thread.score,
        "categories": [c for c in thread.categories.split(",") if c],
        "labels": [x for x in thread.labels.split("\n") if x],
        "subject": thread.subject,
        "first_date": _iso(thread.first_date),
        "last_date": _iso(thread.last_date),
        "messages": [
            {
                "folder": m.folder,
                "uid": m.uid,
                "uidvalidity": m.uidvalidity,
                "message_id": m.message_id,
                "date": _iso(m.date),
                "direction": m.direction,
                "from": m.sender,
                "to": [a for a in m.recipients.split(",") if a],
                "subject": m.subject,
                "risk": m.risk,
                "categories": m.category_list,
                "labels": sorted(m.label_set),
                "notes": [n for n in m.notes.split("\n") if n],
                "findings": [
                    {
                        "rule": f.rule,
                        "category": f.category,
                        "score": f.score,
                        "where": f.where,
                        "evidence": f.evidence,
                        "explanation": f.explanation,
                    }
                    for f in found.get(m.id or 0, [])
                ],
            }
            for m in members
        ],
    }


def _print_thread(record: dict[str, Any]) -> None:
    out = sys.stdout
    cats = ", ".join(record["categories"]) or "-"
    out.write(
        f"[{record['risk'].upper()}] {clean(record['subject'])[:90]}\n"
        f"  thread {record['thread']}  categories: {cats}\n"
    )
    for m in record["messages"]:
        who = f"to {', '.join(m['to'][:3])}" if m["direction"] == "out" else f"from {m['from']}"
        out.write(
            f"  {m['date'] or '(no date)'}  {clean(who)}  "
            f"[{m['risk']}] {clean(m['folder'])}#{m['uid']}\n"
        )
        for f in m["findings"]:
            evidence = clean(f["evidence"])[:160]
            out.write(f"    - {f['rule']} ({f['category']}, {f['score']:g}): {evidence}\n")
    out.write("\n")


# --------------------------------------------------------------------------- export and verify


def _date_range(first: Any, last: Any) -> str:
    if first is None:
        return "(no date)"
    start = first.strftime("%Y-%m-%d")
    end = last.strftime("%Y-%m-%d") if last is not None else start
    return start if start == end else f"{start}..{end}"


def _list_threads(matches: Sequence[Any]) -> None:
    several_accounts = len({m.account for m in matches}) > 1
    for m in matches:
        account = f" (account {clean(m.account)})" if several_accounts else ""
        sys.stderr.write(
            f"  {clean(m.thread_id)}{account}  {_date_range(m.first_date, m.last_date)}  "
            f"{m.messages} message(s)  [{m.risk}]  {clean(m.subject)[:80] or '(no subject)'}\n"
        )
    sys.stderr.flush()


@app.command()
def export(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE.zip",
            help="Where to write the bundle (created 0600, atomically).",
            show_default=False,
        ),
    ],
    thread: Annotated[
        str | None,
        typer.Argument(
            metavar="[THREAD]",
            help="A thread id as `inbox-guard findings` shows it, or a unique prefix of one.",
            show_default=False,
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option("--query", metavar="TEXT", help="Threads whose subject contains TEXT."),
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option(
            "--sender",
            metavar="ADDR",
            help="Threads with a message from or to ADDR (or @domain for a whole domain).",
        ),
    ] = None,
    all_matches: Annotated[
        bool, typer.Option("--all", help="Export every matching thread into one bundle.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE.zip if it exists.")] = False,
    account: Annotated[
        str | None,
        typer.Option("--account", metavar="NAME", help="Only threads of this [[account]]."),
    ] = None,
    mail_hash: Annotated[
        bool,
        typer.Option(
            "--mail-hash",
            help="Also mail the bundle's MANIFEST.json SHA-256 to the digest address "
            "(needs [digest] and [smtp]): a dated copy kept outside the bundle.",
        ),
    ] = False,
    config_path: ConfigOption = None,
) -> None:
    """Write a dispute evidence bundle (original .eml files, timeline, SHA-256 manifest).

    Every message of the thread as the original .eml, a timeline (HTML and text) and a
    manifest of SHA-256 hashes that `verify` checks. Note the MANIFEST.json SHA-256 it
    prints (or use --mail-hash): `verify --expect` compares a bundle with it.

    Exit status: 0 when every message is in the bundle; 1 when the bundle was written but
    some message could not be obtained (each is named on stderr and listed as missing in
    MANIFEST.json with the reason), or its hash could not be mailed, or on a store or
    server failure; 2 on bad usage.
    """
    from guard.reports import export as ex
    from guard.store import StoreError

    if thread is not None and (query is not None or sender is not None):
        fail("give a THREAD id, or --query/--sender, not both")
    if thread is None and query is None and sender is None:
        fail("say which thread: a THREAD id (see `inbox-guard findings`), --query or --sender")
    for name, value in (("THREAD", thread), ("--query", query), ("--sender", sender)):
        if value is not None and not value.strip():
            fail(f"{name} must not be empty")
    if out.is_dir():
        fail(f"'{out}' is a directory")
    if out.exists() and not force:
        fail(f"'{out}' already exists (use --force to replace it)")
    if not out.parent.is_dir():
        fail(f"cannot write '{out}': no such directory '{out.parent}'")
    config = _load_config(config_path)
    if mail_hash and (config.digest is None or config.smtp is None):
        fail("--mail-hash needs [digest] and [smtp] in the configuration")
    _quiet_libraries()
    store = _open_store(config)
    source = ex.ImapSource(config)
    try:
        with store.session() as session:
            matches = ex.find_threads(
                session,
                thread=thread.strip() if thread is not None else None,
                query=query,
                sender=sender,
                account=account,
            )
        wanted = " and ".join(
            f"{name} {value!r}"
            for name, value in (("id", thread), ("subject", query), ("address", sender))
            if value is not None
        )
        if not matches:
            fail(f"no thread in the store matches {wanted} (`inbox-guard findings` lists them)")
        if len(matches) > 1 and not all_matches:
            error(
                f"{len(matches)} threads match {wanted}: give one thread id, "
                "or --all to export them all into one bundle"
            )
            _list_threads(matches)
            raise typer.Exit(2)
        result = ex.export_bundle(
            store,
            matches,
            out,
            source=source,
            zone=ex.bundle_zone(config),
            prefix_bytes={a.name: a.imap.max_message_bytes for a in config.accounts},
            overwrite=force,
        )
    except ex.ExportError as exc:
        fail(str(exc), 1)
    except StoreError as exc:
        fail(str(exc), 1)
    finally:
        source.close()
        store.close()
    for m in result.incomplete:
        where = f"{m.folder} UID {m.uid}" + (f", {m.message_id}" if m.message_id else "")
        what = "is missing from the bundle" if m.status == "missing" else "is only partly in it"
        sys.stderr.write(
            f"{PROG}: warning: message {m.number} ({clean(where)}) {what}: {clean(m.note)}\n"
        )
    total = len(result.messages)
    sys.stdout.write(
        f"wrote {clean(str(out))}: {result.included} of {total} message(s), "
        f"{result.files} files; MANIFEST.json SHA-256 {result.manifest_sha256}\n"
    )
    sys.stdout.flush()
    mail_failed = False
    if mail_hash:
        try:
            recipients = ex.mail_manifest_hash(config, result, matches)
        except ex.ExportError as exc:
            error(f"the bundle was written, but its hash could not be mailed: {exc}")
            mail_failed = True
        else:
            sys.stdout.write(
                f"mailed the MANIFEST.json SHA-256 to {clean(', '.join(recipients))}\n"
            )
            sys.stdout.flush()
    if result.incomplete:
        error(
            f"the bundle is incomplete: {len(result.incomplete)} of {total} message(s) "
            "could not be included whole (listed in MANIFEST.json with the reason)"
        )
        raise typer.Exit(1)
    if mail_failed:
        raise typer.Exit(1)


@app.command()
def verify(
    bundle: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.zip", help="A bundle written by `export`.", show_default=False
        ),
    ],
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            metavar="SHA256",
            help="The MANIFEST.json SHA-256 noted (or mailed) when the bundle was made: "
            "fail unless the bundle has exactly this manifest.",
        ),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Accept messages the manifest lists as missing (not in the bundle).",
        ),
    ] = False,
) -> None:
    """Check an evidence bundle without extracting anything.

    Prints the SHA-256 of MANIFEST.json (compare it with the one noted at export time, or
    give it as --expect); recomputes the SHA-256 of every file and compares each message
    with the hash inbox-guard recorded when it first saw it; refuses entries an unzip
    tool could not write safely (links, absolute or drive-letter paths, "..", dot-files,
    names differing only in case, duplicates).

    Exit status: 0 when everything matches ("OK: N messages, M files verified"; M counts
    every file of the bundle, the messages and both manifest files included); 1 when a
    file was altered, is missing or was added, a message is listed as missing (without
    --allow-missing), an entry is unsafe, or the --expect hash differs (one line on
    stderr per problem); 2 when FILE.zip or one of its entries cannot be read (not a zip,
    truncated, encrypted, another compression, damaged) or on bad usage.
    """
    from guard.reports import export as ex

    if expect is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expect.strip()):
        fail("--expect must be a SHA-256: 64 hexadecimal digits")
    try:
        report = ex.verify_bundle(bundle, expect=expect, allow_missing=allow_missing)
    except ex.BundleError as exc:
        fail(str(exc), 2)
    if report.manifest_sha256 is not None:
        note = (
            "the expected one"
            if expect is not None and expect.strip().lower() == report.manifest_sha256
            else "compare it with the one noted when the bundle was made, or use --expect"
            if expect is None
            else "NOT the expected one"
        )
        sys.stdout.write(f"MANIFEST.json SHA-256 {report.manifest_sha256} ({note})\n")
    for problem in report.problems:
        error(problem)
    if report.problems:
        sys.stdout.write(f"FAILED: {len(report.problems)} problem(s) in {clean(str(bundle))}\n")
        raise typer.Exit(1)
    line = f"OK: {report.messages} messages, {report.files} files verified"
    gaps = [
        f"{n} message(s) listed as {what}"
        for n, what in ((report.missing, "missing"), (report.partial, "partial"))
        if n
    ]
    if gaps:
        line += f" ({', '.join(gaps)} in MANIFEST.json)"
    if report.prefix_only:
        line += (
            f"; {report.prefix_only} message(s) matched on the first bytes inbox-guard "
            "recorded only"
        )
    sys.stdout.write(line + "\n")


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns (and, when run as a script, exits with) the status."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:  # never die on a character the terminal cannot show
            reconfigure(errors="backslashreplace")
    from guard.mail.message import tune_allocator

    tune_allocator()  # a glibc heap pad: HTML parsing stops faulting pages in per message
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = command.main(args=args, prog_name=PROG, standalone_mode=False)
    except Fail as exc:
        error(str(exc))
        status = exc.code
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            status = 2
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            error(" ".join(str(message).replace("Value error, ", "").split()))
            status = getattr(exc, "exit_code", 2) or 2
    except typer.Abort:
        sys.stderr.write("\n")
        status = 130
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 1
    if argv is None:
        sys.exit(status if isinstance(status, int) else 0)
    return status if isinstance(status, int) else 0
