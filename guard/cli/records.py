"""``digest`` and ``findings``: what the store holds, mailed or printed."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from guard.cli.common import (
    ConfigOption,
    Format,
    app,
    config_or_fail,
    fail,
    parse_since,
    store_or_fail,
)
from guard.reports import clean, json_line

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
    from guard import reports
    from guard.store import StoreError

    if send and (preview or since):
        fail("--send cannot be combined with --preview or --since")
    config = config_or_fail(config_path)
    store = store_or_fail(config)
    try:
        if send:
            if config.digest is None or config.smtp is None:
                fail("--send needs [digest] and [smtp] in the configuration")
            outcome = reports.run_digest(store, config)
            sys.stdout.write(clean(str(outcome)) + "\n")
            if not outcome.ok:
                raise typer.Exit(1)
            return
        rendered = reports.preview(store, config, since=parse_since(since))
        sys.stdout.write(f"Subject: {clean(rendered.subject)}\n\n")
        sys.stdout.write(rendered.html if html else clean(rendered.text, multiline=True))
        sys.stdout.write("\n")
    except (reports.DigestError, StoreError) as exc:
        fail(str(exc), 1)
    finally:
        store.close()


# --------------------------------------------------------------------------- findings


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
    """List the flagged threads the store holds, riskiest first, and those you reported."""
    from guard import store as st
    from guard.policy import LEVELS, level_at_least
    from guard.reports.selection import (
        flagged_categories,
        hidden_as_safe,
        reported_threads,
        with_reported,
    )

    config = config_or_fail(config_path)
    since_dt = parse_since(since)
    minimum = "low" if all_levels else config.policy.min_risk
    levels = [lvl for lvl in LEVELS[1:] if level_at_least(lvl, minimum)]
    store = store_or_fail(config)
    out = sys.stdout
    try:
        with store.session() as session:
            threads = with_reported(
                st.threads_since(session, None, since_dt, levels),
                reported_threads(session, None, active_since=since_dt),
            )
            threads = [t for t in threads if not hidden_as_safe(t, flagged_categories(t))]
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
        "categories": [c for c in thread.category_list if c not in thread.safe_category_list],
        "safe_categories": list(thread.safe_category_list),
        "reported": thread.reported,
        "labels": list(thread.label_list),
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
                "to": list(m.recipient_list),
                "subject": m.subject,
                "risk": m.risk,
                "categories": list(m.category_list),
                "labels": sorted(m.label_set),
                "notes": list(m.note_list),
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
    reported = "  (reported by you)" if record["reported"] else ""
    safe = ", ".join(record["safe_categories"])
    safe = f"  marked safe: {safe}" if safe else ""
    out.write(
        f"[{record['risk'].upper()}] {clean(record['subject'])[:90]}{reported}\n"
        f"  thread {record['thread']}  categories: {cats}{safe}\n"
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
