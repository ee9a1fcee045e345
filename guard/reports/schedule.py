"""When the daily digest is due: today's digest moment in the configured time zone, and
the catch-up check a daemon makes when it starts.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import select

from guard import store as st
from guard.config import Config, DigestSettings
from guard.reports.digest import utc_now

__all__ = ["digest_slot", "due"]


def digest_slot(settings: DigestSettings, now: datetime) -> datetime:
    """Today's digest moment as naive UTC: ``digest.time`` on the local date of ``now``
    in ``digest.timezone``. A time skipped by a DST change counts as the moment after the
    gap (02:30 on a spring-forward night is 03:30); a repeated one as its first occurrence.
    """
    zone = settings.zone()
    aware_now = (st.as_utc_naive(now) or now).replace(tzinfo=UTC)
    local_day = aware_now.astimezone(zone).date()
    local = datetime.combine(local_day, settings.time).replace(tzinfo=zone)  # fold=0
    return local.astimezone(UTC).replace(tzinfo=None)


def due(
    store: st.Store, config: Config, account: str = "default", now: datetime | None = None
) -> bool:
    """True when today's digest moment has passed and no digest was built since it.

    For the catch-up at start: a daemon that was down at the digest time builds one
    digest when it comes back, whatever the number of days missed (the digest covers the
    whole time since the previous one). Before today's moment it is not due, even when
    yesterday's was missed: today's digest will cover that time a few hours later.
    """
    if config.digest is None or config.smtp is None:
        return False
    now = utc_now(now)
    slot = digest_slot(config.digest, now)
    if now < slot:
        return False
    with store.session() as session:
        stmt = select(sa.func.max(st.Digest.created_at)).where(st.Digest.account == account)
        latest = session.exec(stmt).one()
    return not (isinstance(latest, datetime) and latest >= slot)
