"""``scan`` (one poll cycle), ``run`` (the service), ``doctor`` (checks every link) and
``replicas`` (the daemons sharing a PostgreSQL store)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from guard.cli.common import (
    ConfigOption,
    Format,
    app,
    config_or_fail,
    error,
    fail,
    quiet_libraries,
    rules_or_fail,
    setup_logging,
    store_or_fail,
)
from guard.reports import clean, json_line


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
    from guard.service.scan import ScanError, scan_accounts

    setup_logging(verbose)
    config = config_or_fail(config_path)
    ruleset = rules_or_fail(list(config.policy.rules))
    try:
        names = (
            [config.account_named(account).name] if account else [a.name for a in config.accounts]
        )
    except ConfigError as exc:
        fail(str(exc))
    several = len(config.accounts) > 1
    store = store_or_fail(config)
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
        for name, summary in scan_accounts(
            config, store, ruleset, names, dry_run=dry_run, only_folder=folder, progress=progress
        ):
            if isinstance(summary, ScanError):  # one failing mailbox does not stop the others
                failures.append((name, summary))
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

    quiet_libraries()
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


# --------------------------------------------------------------------------- replicas


@app.command()
def replicas(
    config_path: ConfigOption = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.text,
) -> None:
    """The daemons sharing a PostgreSQL store, and the mailboxes each owns now."""
    from guard import store as st

    quiet_libraries()
    config = config_or_fail(config_path)
    store = store_or_fail(config)
    try:
        if not st.is_postgres(store.engine):
            fail("one daemon per SQLite store: several daemons need [store] url on PostgreSQL")
        try:
            live = st.replicas(store.engine, float(config.store.lease))
        except Exception as exc:
            fail(f"cannot read the daemons from the store: {st.describe_error(exc)}", 1)
    finally:
        store.close()
    owned = {a for r in live for a in r.accounts}
    orphans = [a.name for a in config.accounts if a.name not in owned]
    if fmt == Format.json:
        sys.stdout.write(
            json_line(
                {
                    "daemons": [
                        {
                            "id": r.id,
                            "started_at": r.started_at.isoformat(),
                            "last_seen": r.last_seen.isoformat(),
                            "accounts": list(r.accounts),
                        }
                        for r in live
                    ],
                    "not_owned": orphans,
                }
            )
            + "\n"
        )
        return
    if not live:
        sys.stdout.write("no daemon is running on this store\n")
    for r in live:
        sys.stdout.write(
            f"{clean(r.id)}  since {r.started_at:%Y-%m-%d %H:%M:%S} UTC  "
            f"{len(r.accounts)} mailbox(es): {clean(', '.join(r.accounts)) or '-'}\n"
        )
    if orphans:
        sys.stdout.write(f"not owned by any daemon: {clean(', '.join(orphans))}\n")
