"""A flagged thread written straight into a store, as a scan would have left it: its
messages, their findings and the thread row (for the digest's unit and delivery tests)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from guard import store as st

ACCOUNT = "default"

_uid = iter(range(1, 1_000_000))


def add_thread(
    store: st.Store,
    thread_id: str,
    *,
    updated_at: datetime,
    risk: str = "high",
    categories: Sequence[str] = ("off_platform_payment",),
    subject: str = "Project budget",
    messages: Sequence[dict[str, Any]] | None = None,
    account: str = ACCOUNT,
) -> None:
    """A thread row plus its messages and findings, as a scan would have left them. Each
    dict of ``messages`` (one by default) may set the message's date, folder, direction,
    sender, sender_name, subject, risk, first_seen_at and findings, (rule, category,
    evidence) triples."""
    messages = messages or [{}]
    with store.session() as session:
        dates = []
        for i, spec in enumerate(messages):
            date = spec.get("date", updated_at - timedelta(minutes=10 * (len(messages) - i)))
            dates.append(date)
            row = st.StoredMessage(
                account=account,
                folder=spec.get("folder", "INBOX"),
                uidvalidity=1,
                uid=next(_uid),
                direction=spec.get("direction", "in"),
                content_hash=f"h{thread_id}{i}",
                thread_id=thread_id,
                date=date,
                sender=spec.get("sender", "client@client.example"),
                sender_name=spec.get("sender_name", "A Client"),
                subject=spec.get("subject", subject if i == 0 else f"Re: {subject}"),
                risk=spec.get("risk", risk),
                score=8.0,
                categories=",".join(categories),
                first_seen_at=spec.get("first_seen_at", updated_at),
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            for finding in spec.get(
                "findings",
                [("payment.pay-directly", categories[0], "I can pay you directly via PayPal")],
            ):
                rule, category, evidence = finding
                session.add(
                    st.StoredFinding(
                        message_pk=row.id,
                        rule=rule,
                        category=category,
                        score=3.5,
                        where="body",
                        evidence=evidence,
                        explanation=f"Explanation of {rule}:\nkeep it on the platform.",
                    )
                )
        session.add(
            st.Thread(
                account=account,
                thread_id=thread_id,
                risk=risk,
                score=8.0,
                categories=",".join(categories),
                labels="\n".join([*categories, f"level:{risk}"]),
                subject=subject,
                first_date=min(dates),
                last_date=max(dates),
                updated_at=updated_at,
            )
        )
