"""The view models of every report: what the digest and the evidence timeline show, as
frozen dataclasses the Jinja2 templates read.

One set for both reports: :class:`MessageView` and :class:`ThreadView` hold what every
report shows of a message or a thread; the digest and the timeline each extend them with
what only they show. Every text in a view is already made safe (see
:mod:`guard.reports.text`); HTML escaping is the templates' job. Building views from the
store is done by the report that shows them (``digest.py``, ``timeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "Advice",
    "AttachmentView",
    "DigestContent",
    "DigestMessage",
    "DigestThread",
    "Explanation",
    "FindingView",
    "MessageView",
    "RenderedDigest",
    "ThreadView",
    "Timeline",
    "TimelineMessage",
    "TimelineThread",
    "UncheckedMessage",
    "When",
]


# --------------------------------------------------------------------------- shared by both


@dataclass(frozen=True)
class MessageView:
    """What every report shows of one message."""

    direction: str  # digest: "in" / "out"; timeline: "received" / "sent by you"
    sender: str
    subject: str
    folder: str


@dataclass(frozen=True)
class ThreadView:
    """What every report shows of one thread."""

    number: int
    subject: str
    risk: str


# --------------------------------------------------------------------------- the digest


@dataclass(frozen=True)
class DigestMessage(MessageView):
    """One message of a thread as the digest shows it."""

    when: str  # local time, "" when the message had no date
    risk: str
    new: bool  # first seen in this digest's period
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class UncheckedMessage(MessageView):
    """A message the guard could not read whole."""

    when: str
    reason: str  # why, as the unchecked finding says ("more than 1000 MIME parts; ...")


@dataclass(frozen=True)
class Explanation:
    rule: str
    category: str
    title: str
    text: str


@dataclass(frozen=True)
class Advice:
    category: str
    title: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class DigestThread(ThreadView):
    risk_title: str
    score: float
    categories: tuple[str, ...]
    category_titles: tuple[str, ...]
    first: str
    last: str
    messages: tuple[DigestMessage, ...]
    hidden_messages: int  # earlier messages of the thread not shown
    explanations: tuple[Explanation, ...]
    advice: tuple[Advice, ...]
    suggested_reply: str | None
    reported: bool = False  # the user reported it from the mail client
    stage_title: str = ""  # where an off-platform request stands ("Asked again ...")
    stage_advice: str = ""
    report: str = ""  # at rung 3: the report to paste into the platform's form


@dataclass(frozen=True)
class DigestContent:
    """Everything a digest says, before rendering."""

    account: str
    period_start: datetime | None  # naive UTC; None: since the beginning
    period_end: datetime  # naive UTC
    zone: str
    since: str  # local time text of period_start, "" when None
    until: str
    day: str  # local date of period_end, YYYY-MM-DD
    scanned: int  # new messages scanned in the period
    scans: int
    threads: tuple[DigestThread, ...]  # at most digest.MAX_THREADS
    total_threads: int
    by_level: tuple[tuple[str, int], ...]  # (risk, threads), riskiest first, counts > 0
    by_category: tuple[tuple[str, str, int], ...]  # (category, title, threads)
    unchecked: tuple[UncheckedMessage, ...] = ()  # at most digest.MAX_UNCHECKED, oldest first
    total_unchecked: int = 0  # messages first seen in the period that were not read whole
    marked_safe: int = 0  # threads the user marked safe in the period
    reported: int = 0  # threads the user reported in the period

    @property
    def hidden_unchecked(self) -> int:
        return self.total_unchecked - len(self.unchecked)

    @property
    def feedback_summary(self) -> str:
        """The period's feedback in a line ("You marked 2 threads safe and reported 1."),
        or "" when there was none."""

        def threads(n: int) -> str:
            return f"{n} thread{'' if n == 1 else 's'}"

        if self.marked_safe and self.reported:
            return f"You marked {threads(self.marked_safe)} safe and reported {self.reported}."
        if self.marked_safe:
            return f"You marked {threads(self.marked_safe)} safe."
        if self.reported:
            return f"You reported {threads(self.reported)}."
        return ""

    @property
    def high(self) -> int:
        return dict(self.by_level).get("high", 0)

    @property
    def hidden_threads(self) -> int:
        return self.total_threads - len(self.threads)


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    text: str
    html: str
    content: DigestContent

    @property
    def threads(self) -> int:
        return self.content.total_threads


# --------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class When:
    """One moment shown in UTC and, when a zone is configured, in local time too."""

    utc: str
    local: str = ""


@dataclass(frozen=True)
class FindingView:
    title: str
    rule: str
    score: str
    where: str
    evidence: str
    explanation: str


@dataclass(frozen=True)
class AttachmentView:
    name: str
    type: str
    size: str


@dataclass(frozen=True)
class TimelineMessage(MessageView):
    """One message as the evidence timeline shows it, with where it is in the bundle."""

    number: int
    file: str
    status: str
    note: str
    thread: int
    date: When | None
    received: When | None
    date_header: str
    uid: int
    uidvalidity: int
    to: tuple[str, ...]
    cc: tuple[str, ...]
    message_id: str
    sha256: str
    size: str
    findings: tuple[FindingView, ...]
    attachments: tuple[AttachmentView, ...]
    body: str
    body_shortened: bool
    defects: tuple[str, ...]


@dataclass(frozen=True)
class TimelineThread(ThreadView):
    account: str
    thread_id: str
    categories: tuple[str, ...]
    first: When | None
    last: When | None
    messages: int


@dataclass(frozen=True)
class Timeline:
    title: str
    created: When
    zone: str
    version: str
    threads: tuple[TimelineThread, ...]
    messages: tuple[TimelineMessage, ...]
    included: int
    partial: int
    missing: int
