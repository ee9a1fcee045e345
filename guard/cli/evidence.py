"""``export`` and ``verify``: dispute evidence bundles; ``report``: the report of a client
who insisted on leaving the platform, with its bundle."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from guard.cli.common import (
    PROG,
    ConfigOption,
    app,
    config_or_fail,
    error,
    fail,
    quiet_libraries,
    store_or_fail,
)
from guard.reports import clean

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


@contextmanager
def _thread_errors() -> Iterator[None]:
    """The one-line errors of picking a thread and writing its bundle: exit 2 for a THREAD
    that matches none or several (listed), 1 for a store or export failure."""
    from guard import reports
    from guard.store import StoreError

    try:
        yield
    except reports.NoThreadMatches as exc:
        fail(str(exc))
    except reports.TooManyThreads as exc:
        error(str(exc))
        _list_threads(exc.matches)
        raise typer.Exit(2) from None
    except (reports.ExportError, StoreError) as exc:
        fail(str(exc), 1)


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
    from guard import reports

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
    config = config_or_fail(config_path)
    if mail_hash and (config.digest is None or config.smtp is None):
        fail("--mail-hash needs [digest] and [smtp] in the configuration")
    quiet_libraries()
    store = store_or_fail(config)
    source = reports.ImapSource(config)
    try:
        with _thread_errors():
            with store.session() as session:
                matches = reports.select_threads(
                    session,
                    thread=thread,
                    query=query,
                    sender=sender,
                    account=account,
                    several=all_matches,
                )
            result = reports.export_bundle(
                store,
                matches,
                out,
                source=source,
                zone=reports.bundle_zone(config),
                prefix_bytes={a.name: a.imap.max_message_bytes for a in config.accounts},
                overwrite=force,
            )
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
            recipients = reports.mail_manifest_hash(config, result, matches)
        except reports.ExportError as exc:
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
    from guard import reports

    if expect is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expect.strip()):
        fail("--expect must be a SHA-256: 64 hexadecimal digits")
    try:
        report = reports.verify_bundle(bundle, expect=expect, allow_missing=allow_missing)
    except reports.BundleError as exc:
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


# --------------------------------------------------------------------------- report


@app.command()
def report(
    thread: Annotated[
        str,
        typer.Argument(
            metavar="THREAD",
            help="A thread id as `inbox-guard findings` shows it, or a unique prefix of one.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--dir", metavar="DIR", help="Where to write the evidence bundle."),
    ] = Path("."),
    account: Annotated[
        str | None,
        typer.Option("--account", metavar="NAME", help="Only threads of this [[account]]."),
    ] = None,
    config_path: ConfigOption = None,
) -> None:
    """Prepare the report of a client who asked to leave the platform: a plain-text summary
    for the platform's report form (who, when, what was asked, what you answered) and an
    evidence bundle to attach, named in it with its SHA-256.

    The guard makes one on its own when a client insists after two declines; this makes
    (or makes again) the report of any thread."""
    from datetime import UTC

    from guard import reports
    from guard.reports import escalation

    if not thread.strip():
        fail("THREAD must not be empty")
    if not out_dir.is_dir():
        fail(f"cannot write the bundle: no such directory '{out_dir}'")
    config = config_or_fail(config_path)
    quiet_libraries()
    store = store_or_fail(config)
    try:
        with _thread_errors():
            with store.session() as session:
                (match,) = reports.select_threads(session, thread=thread, account=account)
            made = escalation.make_report(
                store,
                match.account,
                match.thread_id,
                min_risk=config.policy.min_risk,
                platform=config.drafts.platform,
                out_dir=out_dir,
                zone=reports.bundle_zone(config) or UTC,
            )
    finally:
        store.close()
    sys.stdout.write(made.text)
    sys.stdout.flush()
