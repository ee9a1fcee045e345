"""One scan's shared state: its settings, mailbox, summary and store units of work.

A scan is put together from parts (``guard.service.labelling``, ``guard.service.recording``
and the folder loop in ``guard.service.scan``); each works on the same :class:`ScanWork`:
the store's units of work (committed, or in a dry run one transaction rolled back at the
end), the stop check, the summary being built and the folder of sent mail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from guard import store as st
from guard.errors import GuardError, Kind
from guard.mailbox import Mailbox
from guard.policy import level_at_least

if TYPE_CHECKING:
    from guard.service.scan import ScanSettings


@dataclass
class FolderSummary:
    fetched: int = 0
    new_messages: int = 0
    risky: int = 0
    uidvalidity: int | None = None
    uidvalidity_reset: bool = False
    unchanged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # every field, in field order


@dataclass(frozen=True)
class PlannedLabel:
    folder: str
    uid: int
    subject: str
    sender: str
    risk: str
    labels: tuple[str, ...]  # spellings, e.g. "keyword:$GuardScam", "folder:Guard/Scam"


@dataclass
class ScanSummary:
    account: str
    dry_run: bool
    label_mode: str = ""
    folders: dict[str, FolderSummary] = field(default_factory=dict)
    labelled: int = 0
    planned: list[PlannedLabel] = field(default_factory=list)
    commands: int = 0
    fetch_commands: int = 0
    drafts: int = 0
    feedback: int = 0  # corrections the user made in the mail client, recorded now
    stopped: bool = False  # ended early because a stop was requested

    @property
    def fetched(self) -> int:
        return sum(f.fetched for f in self.folders.values())

    @property
    def new_messages(self) -> int:
        return sum(f.new_messages for f in self.folders.values())

    @property
    def risky(self) -> int:
        return sum(f.risky for f in self.folders.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "folders": {name: f.to_dict() for name, f in self.folders.items()},
            "fetched": self.fetched,
            "new_messages": self.new_messages,
            "risky": self.risky,
            "labelled": self.labelled,
            "label_mode": self.label_mode,
            "dry_run": self.dry_run,
            "fetch_commands": self.fetch_commands,
            "drafts": self.drafts,
            "feedback": self.feedback,
            "stopped": self.stopped,
        }
        if self.dry_run:
            out["would_label"] = [
                {
                    "folder": p.folder,
                    "uid": p.uid,
                    "subject": p.subject,
                    "from": p.sender,
                    "risk": p.risk,
                    "labels": list(p.labels),
                }
                for p in self.planned
            ]
        return out


class ScanStopped(GuardError):
    """A stop was requested: the scan ends before judging or writing anything more."""

    kind = Kind.STOPPED


class ScanWork:
    """The state every part of one scan shares."""

    def __init__(
        self, settings: ScanSettings, store: st.Store, conn: Mailbox, dry_run: bool
    ) -> None:
        self.s = settings
        self.store = store
        self.conn = conn
        self.dry_run = dry_run
        self.summary = ScanSummary(account=settings.account, dry_run=dry_run)
        self.sent_folder: str | None = None
        self.stop_requested: Callable[[], bool] = lambda: False
        self._dry_session: Session | None = None

    @contextmanager
    def unit(self) -> Iterator[Session]:
        """A committed unit of work, or in a dry run a flush inside one open transaction
        that is rolled back at the end. None begins once a stop was requested."""
        self.check_stop()
        if not self.dry_run:
            with self.store.session() as session:
                yield session
            return
        if self._dry_session is None:
            self._dry_session = Session(self.store.engine, expire_on_commit=False)
        try:
            yield self._dry_session
            self._dry_session.flush()
        except (SQLAlchemyError, UnicodeError, OverflowError) as exc:  # never SQL or values
            raise st.RowRefused(st.error_class(exc)) from None

    def check_stop(self) -> None:
        if self.stop_requested():
            raise ScanStopped

    def discard(self) -> None:
        if self._dry_session is not None:
            self._dry_session.rollback()
            self._dry_session.close()
            self._dry_session = None

    def labels_level(self, risk: str) -> bool:
        return risk != "none" and level_at_least(risk, self.s.min_risk)


class ScanPart:
    """A part of one scan: works on the scan's shared :class:`ScanWork`."""

    def __init__(self, work: ScanWork) -> None:
        self.work = work
        self.s = work.s
        self.conn = work.conn
        self.dry_run = work.dry_run
        self.summary = work.summary
        self.unit = work.unit
        self.check_stop = work.check_stop
        self.labels_level = work.labels_level
