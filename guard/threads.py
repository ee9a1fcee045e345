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
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlmodel import Session

from guard import store
from guard.message import Message

_MSGID = re.compile(r"<([^<>\s]{1,900})>")
# Reply and forward prefixes in the languages the rules cover (and Outlook's brackets).
_PREFIX = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)?"
    r"(?:re|fw|fwd|aw|wg|sv|vs|antw|rif|r|res|enc|tr|ref|odp|отв|ответ|пересл|fwd?)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*",
    re.IGNORECASE,
)


def message_ids(header: str | None) -> list[str]:
    """The ids in a Message-ID / In-Reply-To / References header, in order, lowercased
    domain-insensitively enough for matching (ids are compared as written, minus <>)."""
    if not header:
        return []
    found = _MSGID.findall(header)
    if not found:
        bare = header.strip()
        return [bare] if bare and " " not in bare and len(bare) < 900 else []
    return found


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
    own = tuple(message_ids(msg.message_id))[:1]
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


def assign(
    session: Session,
    account: str,
    msg: Message,
    content_hash: str,
    gm_thrid: int | None = None,
) -> str:
    """The thread id for a new message; records its ids and merges threads it joins."""
    keys = keys_for(msg)
    ids = ["id:" + x for x in (*keys.own, *keys.refs)]
    found = store.threads_for_refs(session, account, ids)
    if gm_thrid is not None:
        thread_id = f"gm:{gm_thrid}"
        found = [t for t in found if t != thread_id]
        store.merge_threads(session, account, thread_id, found)
    elif found:
        thread_id = _oldest(found)
        store.merge_threads(session, account, thread_id, [t for t in found if t != thread_id])
    else:
        thread_id = ""
        if keys.subject and keys.is_reply:
            by_subject = store.threads_for_refs(session, account, [keys.subject])
            if by_subject:
                thread_id = _oldest(by_subject)
        if not thread_id:
            thread_id = new_thread_id(content_hash, None)
    refs: list[str] = list(ids)
    if keys.subject:
        refs.append(keys.subject)
    store.add_refs(session, account, refs, thread_id)
    return thread_id


def _oldest(thread_ids: Iterable[str]) -> str:
    # Stable choice: Gmail ids win (they are the server's own), then the smallest id.
    ids = sorted(thread_ids)
    gm = [t for t in ids if t.startswith("gm:")]
    return (gm or ids)[0]


def assign_batch(
    session: Session,
    account: str,
    items: Sequence[tuple[Message, str, int | None]],
) -> list[str]:
    """Thread ids for a batch of new messages (message, content hash, Gmail thread id),
    with one look-up of the known ids for the whole batch. Messages of the batch that
    refer to each other end up in one thread, whatever their order."""
    keys = [keys_for(msg) for msg, _h, _g in items]
    wanted: set[str] = set()
    for k in keys:
        wanted.update("id:" + x for x in (*k.own, *k.refs))
        if k.subject:
            wanted.add(k.subject)
    local = store.ref_map(session, account, sorted(wanted))  # ref -> thread id
    changed: dict[str, str] = {}
    result: list[str] = []
    for (_msg, content_hash, gm_thrid), k in zip(items, keys, strict=True):
        ids = ["id:" + x for x in (*k.own, *k.refs)]
        found = sorted({local[r] for r in ids if r in local})
        if gm_thrid is not None:
            thread_id = f"gm:{gm_thrid}"
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
        for ref in [*ids, *([k.subject] if k.subject else [])]:
            if local.get(ref) != thread_id:
                local[ref] = changed[ref] = thread_id
        result.append(thread_id)
    store.set_refs(session, account, changed)
    return result
