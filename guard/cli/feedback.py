"""``feedback``: what the user taught the guard from the mail client, and undoing it.

Lists the feedback rows in force (threads marked safe or reported), newest first;
``--forget ID`` undoes one (:func:`guard.store.forget_feedback`), rebuilds its thread's
feedback columns and marks the thread's messages for relabelling, so the next scan puts
back the labels the thread should now carry.
Senders and subjects come from mail: shown through :func:`guard.reports.clean` (text) or
:func:`guard.reports.json_line` (JSON), never as they are.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from guard.cli.common import ConfigOption, Format, app, config_or_fail, fail, store_or_fail
from guard.reports import clean, json_line

KINDS = {"safe": "safe", "report": "reported"}
"""How each kind is named in the output."""


def _how(via: str, kind: str, prefix: str) -> str:
    """How the user gave the feedback, in words (``prefix``: the account's label prefix)."""
    folder = f"{prefix}/{'Safe' if kind == 'safe' else 'Report'}"
    return {
        "move": f"moved to {folder}",
        "copy": f"copied to {folder}",
        "keywords": "guard keywords removed",
        "gmail-label": f"Gmail label {folder}",
    }.get(via, via)


def _prefixes(config: Any) -> dict[str, str]:
    return {acct.name: acct.labels.prefix for acct in config.accounts}


def _record(row: Any, prefixes: dict[str, str]) -> dict[str, Any]:
    from guard.store import iso_z

    return {
        "id": row.id,
        "date": iso_z(row.created_at),
        "account": row.account,
        "kind": KINDS.get(row.kind, row.kind),
        "via": row.via,
        "how": _how(row.via, row.kind, prefixes.get(row.account, "Guard")),
        "sender": row.sender,
        "subject": row.subject,
        "categories": list(row.category_list),
        "thread": row.thread_id,
    }


def _print_record(record: dict[str, Any]) -> None:
    cats = ", ".join(record["categories"]) or "-"
    thread = record["thread"] or "(message not recorded yet)"
    sys.stdout.write(
        f"#{record['id']}  {record['date']}  {clean(record['account'])}  "
        f"{record['kind']} ({clean(record['how'])})\n"
        f"    from {clean(record['sender'])[:160] or '(unknown sender)'}: "
        f"{clean(record['subject'])[:160] or '(no subject)'}\n"
        f"    categories: {cats}  thread {clean(thread)}\n"
    )


@app.command()
def feedback(
    config_path: ConfigOption = None,
    account: Annotated[
        str | None,
        typer.Option("--account", metavar="NAME", help="Only this account's feedback."),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="text or json (a list).")] = (
        Format.text
    ),
    forget: Annotated[
        int | None,
        typer.Option(
            "--forget", metavar="ID", help="Undo one feedback (its id, as listed) and relabel."
        ),
    ] = None,
) -> None:
    """List what you marked safe or reported from your mail client, newest first."""
    from guard import store as st
    from guard.config import ConfigError

    config = config_or_fail(config_path)
    if account is not None:
        try:
            config.account_named(account)
        except ConfigError as exc:
            fail(str(exc))
    prefixes = _prefixes(config)
    store = store_or_fail(config)
    try:
        if forget is not None:
            _forget(store, forget, account, fmt, prefixes)
            return
        with store.session() as session:
            records = [
                _record(row, prefixes)
                for row in reversed(st.feedback_rows(session, account=account))
            ]
    except st.StoreError as exc:
        fail(str(exc), 1)
    finally:
        store.close()
    if fmt is Format.json:
        sys.stdout.write(json_line(records) + "\n")
        return
    if not records:
        sys.stdout.write("No feedback recorded.\n")
        return
    for record in records:
        _print_record(record)
    sys.stdout.write(f"{len(records)} feedback row(s)\n")


def _forget(
    store: Any, feedback_id: int, account: str | None, fmt: Format, prefixes: dict[str, str]
) -> None:
    """Undo one feedback row (the store keeps it, marked forgotten: it counts no more); its
    thread is summed up again from the rows left and its messages wait for the next scan
    to set the labels it should carry now."""
    from guard import store as st

    with store.session() as session:
        row = session.get(st.Feedback, feedback_id)
        if row is not None and (account is None or row.account == account):
            record = _record(row, prefixes)
            thread_id, row_account = row.thread_id, row.account
            row = st.forget_feedback(session, feedback_id)  # None: already forgotten
        if row is None or (account is not None and row.account != account):
            where = f" of account {account!r}" if account is not None else ""
            fail(f"no feedback with id {feedback_id}{where} (`inbox-guard feedback` lists them)")
        relabel = 0
        thread = st.get_thread(session, row_account, thread_id) if thread_id else None
        linked = thread.thread_id if thread is not None else None
        if thread is not None:
            st.refresh_thread(session, thread)
            for member in st.thread_messages(session, row_account, thread.thread_id):
                member.label_pending = True
                session.add(member)
                relabel += 1
    if fmt is Format.json:
        sys.stdout.write(json_line({"forgotten": record, "relabel": relabel}) + "\n")
        return
    what = f"#{feedback_id} ({record['kind']}, {clean(record['subject'])[:80] or '(no subject)'})"
    if linked is not None:
        sys.stdout.write(
            f"Forgot feedback {what}; thread {clean(linked)}: {relabel} message(s) "
            "will be relabelled at the next scan.\n"
        )
    else:
        sys.stdout.write(f"Forgot feedback {what}; it was linked to no recorded thread.\n")
