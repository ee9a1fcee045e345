"""Which conversation a message belongs to.

In order of trust:
1. Gmail's own thread id (X-GM-THRID), when the server gives one.
2. Message-ID / In-Reply-To / References: every id a thread contains or refers to points
   at the thread, so a reply finds its parent and a parent that arrives after its reply
   (another folder, a late delivery) finds the reply. A message that joins two threads
   merges them.
3. The subject, only for a message that says it is a reply ("Re:", "AW:", "RES:", ...)
   and has no usable references, and only with exactly the same set of correspondents:
   two clients writing "Re: Logo design" are never put together.

Ids are the sender's to write, so they only open a thread to its participants: a message
joins (and merges) a thread only if its sender sent or received a message of it, is the
mailbox owner (its Sent folder, its configured address) or a verified platform sender.
Anyone else citing a client's Message-ID starts a thread of their own and leaves the
client's thread, its refs and its labels as they were (the same holds for a Gmail thread
id that already belongs to other people). A message that reuses the Message-ID of an
earlier message from another sender is a forgery: ``reused_message_ids`` finds it and
``reused_id_finding`` is the phishing finding it gets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from guard import store
from guard.mail import Message, msgid
from guard.policy import RuleSet, sum_findings
from guard.policy.model import Finding, Verdict

# Reply and forward prefixes in the languages the rules cover (and Outlook's brackets).
_PREFIX = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)?"
    r"(?:re|fw|fwd|aw|wg|sv|vs|antw|rif|r|res|enc|tr|ref|odp|отв|ответ|пересл|fwd?)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*",
    re.IGNORECASE,
)

REUSED_ID_RULE = "thread.reused-message-id"
REUSED_ID_SCORE = 5.0  # medium on its own: labelled at the default policy.min_risk
REUSED_ID_EXPLANATION = (
    "This message carries the Message-ID of an earlier message from someone else. Mail "
    "programs use that id to file replies into the same conversation, so copying it is a "
    "way to slip a message into a real client's thread and borrow the trust you have in "
    "it. Treat it as phishing: do not follow its payment details, links or instructions, "
    "and check with the client on the platform. The guard kept it out of that thread."
)

Trusted = Callable[[Message], bool]


def message_ids(header: str | None) -> list[str]:
    """The valid ids of a Message-ID / In-Reply-To / References header, in order, without
    their angle brackets (ids are compared as written). Only strict ``<local@domain>``
    tokens count (see ``guard.mail.msgid``): encoded words, non-ASCII and other junk are
    dropped, so they can neither hijack a thread nor end up in a draft."""
    return [i[1:-1] for i in msgid.parse_list(header)]


def strip_reply_prefixes(subject: str) -> tuple[str, bool]:
    """The subject without any number of Re:/Fwd:-style prefixes, and whether it had one."""
    text = subject.strip()
    had = False
    while True:
        m = _PREFIX.match(text)
        if not m or m.end() == 0:
            break
        text = text[m.end() :]
        had = True
    return " ".join(text.split()).casefold(), had


def _participants(msg: Message) -> list[str]:
    addrs = {a.addr.lower() for a in (msg.from_, *msg.to, *msg.cc) if a and a.addr}
    return sorted(addrs)


def subject_key(msg: Message) -> tuple[str | None, bool]:
    """A key for (subject, correspondents) and whether the subject is a reply."""
    base, is_reply = strip_reply_prefixes(msg.subject or "")
    people = _participants(msg)
    if not base or not people:
        return None, is_reply
    digest = hashlib.sha256(("\x00".join([base, *people])).encode()).hexdigest()[:32]
    return f"subject:{digest}", is_reply


@dataclass(frozen=True)
class ThreadKeys:
    own: tuple[str, ...]  # this message's Message-ID (zero or one)
    refs: tuple[str, ...]  # ids it replies to or refers to
    subject: str | None
    is_reply: bool


def keys_for(msg: Message) -> ThreadKeys:
    own_id = msgid.parse_one(msg.message_id)
    own = (own_id[1:-1],) if own_id else ()
    refs: list[str] = []
    for header in (msg.in_reply_to, " ".join(msg.references or ())):
        for ref in message_ids(header):
            if ref not in refs and ref not in own:
                refs.append(ref)
    subject, is_reply = subject_key(msg)
    return ThreadKeys(own, tuple(refs[-100:]), subject, is_reply)


def new_thread_id(content_hash: str, gm_thrid: int | None) -> str:
    if gm_thrid is not None:
        return f"gm:{gm_thrid}"
    return f"t:{content_hash[:24]}"


def sender_of(msg: Message) -> str:
    return msg.from_.addr.lower() if msg.from_ is not None and msg.from_.addr else ""


def assign(
    session: Session,
    account: str,
    msg: Message,
    content_hash: str,
    gm_thrid: int | None = None,
    *,
    owners: Collection[str] = (),
    trusted: Trusted | None = None,
) -> str:
    """The thread id for one new message; records its ids and merges threads it joins."""
    return assign_batch(
        session, account, [(msg, content_hash, gm_thrid)], owners=owners, trusted=trusted
    )[0]


def _oldest(thread_ids: Iterable[str]) -> str:
    # Stable choice: Gmail ids win (they are the server's own), then the smallest id.
    ids = sorted(thread_ids)
    gm = [t for t in ids if t.startswith("gm:")]
    return (gm or ids)[0]


def thread_participants(
    session: Session, account: str, thread_ids: Sequence[str]
) -> dict[str, set[str]]:
    """Every address that sent or received a recorded message of each thread (lower-cased)."""
    out: dict[str, set[str]] = {}
    ids = sorted(set(thread_ids))
    for start in range(0, len(ids), 500):
        stmt = select(
            store.StoredMessage.thread_id,
            store.StoredMessage.sender,
            store.StoredMessage.recipients,
        ).where(
            store.StoredMessage.account == account,
            col(store.StoredMessage.thread_id).in_(ids[start : start + 500]),
        )
        for thread_id, sender, recipients in session.exec(stmt):
            people = out.setdefault(thread_id, set())
            if sender:
                people.add(sender.lower())
            people.update(
                a.strip().lower() for a in store.split_commas(recipients or "") if a.strip()
            )
    return out


def assign_batch(
    session: Session,
    account: str,
    items: Sequence[tuple[Message, str, int | None]],
    *,
    owners: Collection[str] = (),
    owner_sent: bool = False,
    trusted: Trusted | None = None,
    reused: dict[int, tuple[str, str]] | None = None,
) -> list[str]:
    """Thread ids for a batch of new messages (message, content hash, Gmail thread id),
    with one look-up of the known ids for the whole batch. Messages of the batch that
    refer to each other end up in one thread, whatever their order.

    A message joins a thread its ids point at only when its sender is a participant of
    that thread, one of ``owners`` (the mailbox's own addresses), ``trusted(msg)`` says it
    is the platform, or ``owner_sent`` (the batch comes from the Sent folder). Otherwise it
    starts its own thread, and the ids it cites keep pointing where they did.

    ``reused``, when given, is filled like ``reused_message_ids`` would fill it (at no
    extra query unless a message's own id is already known)."""
    owner_set = {o.lower() for o in owners if o}
    keys = [keys_for(msg) for msg, _h, _g in items]
    senders = [sender_of(msg) for msg, _h, _g in items]
    insiders = [
        owner_sent
        or (bool(sender) and sender in owner_set)
        or (trusted is not None and trusted(msg))
        for (msg, _h, _g), sender in zip(items, senders, strict=True)
    ]
    wanted: set[str] = set()
    for k in keys:
        wanted.update("id:" + x for x in (*k.own, *k.refs))
        if k.subject:
            wanted.add(k.subject)
    local = store.ref_map(session, account, sorted(wanted))  # ref -> thread id
    # who may join: the participants of every thread a message from outside cites
    joinable: set[str] = set()
    for (_m, _h, gm_thrid), k, insider in zip(items, keys, insiders, strict=True):
        if not insider:
            joinable.update(local[r] for r in ("id:" + x for x in (*k.own, *k.refs)) if r in local)
            if gm_thrid is not None:
                joinable.add(f"gm:{gm_thrid}")
    people = thread_participants(session, account, sorted(joinable))
    if reused is not None:
        # only an id already recorded as a ref can belong to a recorded message
        recorded = [f"<{k.own[0]}>" for k in keys if k.own and "id:" + k.own[0] in local]
        reused.update(_reused(session, account, [m for m, _h, _g in items], recorded))
    changed: dict[str, str] = {}
    result: list[str] = []
    for (msg, content_hash, gm_thrid), k, sender, insider in zip(
        items, keys, senders, insiders, strict=True
    ):

        def welcome(thread_id: str, sender: str = sender, insider: bool = insider) -> bool:
            known = people.get(thread_id)
            return insider or not known or (bool(sender) and sender in known)

        ids = ["id:" + x for x in (*k.own, *k.refs)]
        cited = sorted({local[r] for r in ids if r in local})
        found = [t for t in cited if welcome(t)]
        if gm_thrid is not None and welcome(f"gm:{gm_thrid}"):
            thread_id = f"gm:{gm_thrid}"
        elif gm_thrid is not None:  # Gmail filed it with other people's thread
            thread_id = new_thread_id(content_hash, None)
            found = []
        elif found:
            thread_id = _oldest(found)
        elif k.subject and k.is_reply and k.subject in local:
            thread_id = local[k.subject]
        else:
            thread_id = new_thread_id(content_hash, None)
        merged = [t for t in found if t != thread_id]
        if merged:
            session.flush()
            store.merge_threads(session, account, thread_id, merged)
            gone = set(merged)
            for ref, t in local.items():
                if t in gone:
                    local[ref] = changed[ref] = thread_id
            result = [thread_id if t in gone else t for t in result]
            joined = people.setdefault(thread_id, set())
            for t in merged:
                joined.update(people.pop(t, set()))
        for ref in ids:
            current = local.get(ref)
            if current == thread_id:
                continue
            if current is not None and current not in found:
                continue  # another thread's id, cited by someone who may not join it
            local[ref] = changed[ref] = thread_id
        if k.subject and local.get(k.subject) != thread_id:
            local[k.subject] = changed[k.subject] = thread_id
        people.setdefault(thread_id, set()).update(_participants(msg))
        result.append(thread_id)
    store.set_refs(session, account, changed)
    return result


def reused_message_ids(
    session: Session, account: str, messages: Sequence[Message]
) -> dict[int, tuple[str, str]]:
    """The messages (by index) whose Message-ID was already used by a message from
    another sender, recorded or earlier in ``messages``: index -> (id, first sender)."""
    owns = [msgid.parse_one(m.message_id) for m in messages]
    return _reused(session, account, messages, sorted({o for o in owns if o}))


def _reused(
    session: Session, account: str, messages: Sequence[Message], recorded: Sequence[str]
) -> dict[int, tuple[str, str]]:
    """``reused_message_ids``, looking up only the ``recorded`` ids in the store."""
    first: dict[str, str] = {}
    wanted = sorted(set(recorded))
    for start in range(0, len(wanted), 500):
        stmt = (
            select(store.StoredMessage.message_id, store.StoredMessage.sender)
            .where(
                store.StoredMessage.account == account,
                col(store.StoredMessage.message_id).in_(wanted[start : start + 500]),
            )
            .order_by(col(store.StoredMessage.id))
        )
        for message_id, sender in session.exec(stmt):
            if message_id is not None:
                first.setdefault(message_id, (sender or "").lower())
    out: dict[int, tuple[str, str]] = {}
    for i, msg in enumerate(messages):
        own = msgid.parse_one(msg.message_id)
        if own is None:
            continue
        sender = sender_of(msg)
        earlier = first.setdefault(own, sender)
        if earlier != sender:
            out[i] = (own, earlier)
    return out


def reused_id_finding(message_id: str, first_sender: str) -> Finding:
    """The phishing finding for a message that reuses another sender's Message-ID."""
    return Finding(
        rule=REUSED_ID_RULE,
        category="phishing",
        score=REUSED_ID_SCORE,
        where="header",
        evidence=(
            f"Message-ID {message_id} was first used by a message from "
            f"{first_sender or 'a sender with no address'}"
        )[:240],
        explanation=REUSED_ID_EXPLANATION,
        description="Message-ID copied from another sender's message",
    )


def with_finding(rules: RuleSet, verdict: Verdict, finding: Finding) -> Verdict:
    """``verdict`` with one more finding, its risk, score and categories summed again by
    the engine's own rule (what was unchecked stays unchecked)."""
    again = sum_findings(rules, [*verdict.findings, finding], list(verdict.notes))
    return dataclasses.replace(again, unchecked=verdict.unchecked)
