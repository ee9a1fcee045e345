"""Talking to the IMAP server: connection, folder sync primitives and label writers.

Everything here keeps the mailbox as the user left it: messages are fetched with
``BODY.PEEK[]`` (``\\Seen`` is never set), nothing is deleted, expunged or moved. Labels are
only ever added (keywords, Gmail labels, or a copy into a label folder). The one exception,
the user's corrections (put a message back, take a label away), lives in ``corrections``.

Errors are raised as :class:`ImapError` with a one-line reason a user can act on
(DNS, refused, TLS, login, timeout, folder missing, connection lost). No password or token
is ever part of a message.

At about 550 lines this is one cohesive thing on purpose: the ``Connection`` class, the
only code that speaks IMAP, with the error translation every command shares. Splitting
its commands across modules would scatter one protocol's rules.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import imapclient.imapclient
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from guard.mail import msgid
from guard.mailbox.corrections import Corrections
from guard.mailbox.errors import ImapError
from guard.mailbox.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int | None
    highest_modseq: int | None
    messages: int | None


@dataclass(frozen=True)
class Selected:
    folder: str
    uidvalidity: int
    uidnext: int | None
    highest_modseq: int | None
    exists: int
    permanent_flags: frozenset[str]
    readonly: bool

    @property
    def keywords_allowed(self) -> bool:
        return "\\*" in self.permanent_flags


@dataclass(frozen=True)
class Fetched:
    uid: int
    raw: bytes
    size: int  # RFC822.SIZE: the full size, even when only a prefix was fetched
    internal_date: datetime | None
    flags: frozenset[str]
    gm_thrid: int | None
    truncated: bool


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line[:limit]


_BYTES_REPR = re.compile(r"""b(['"])(.{0,4000})\1""", re.DOTALL)


def _server_said(value: Any, limit: int = 200) -> str:
    """The server's reply as one clean line: bytes decoded, also from the ``b'...'`` repr
    that imaplib's errors carry, and control, bidi and other invisible characters
    dropped (the reply is the server's text, not ours)."""
    text = _text(value).strip()
    wrapped = _BYTES_REPR.fullmatch(text)
    if wrapped is not None:
        try:
            text = _text(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            text = wrapped.group(2)
    return _one_line("".join(ch if ch.isprintable() else " " for ch in text), limit)


def describe(exc: BaseException, settings: ServerSettings) -> ImapError:
    """Turn a socket/TLS/IMAP exception into an ImapError with a clear reason."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ImapError):
        return exc
    if type(exc).__name__ == "ConfigError":  # a password/token command or file failed
        return ImapError("config", str(exc))
    if isinstance(exc, socket.gaierror):
        return ImapError("dns", f"cannot resolve IMAP host {settings.host!r}: {exc.strerror}")
    if isinstance(exc, ConnectionRefusedError):
        return ImapError("refused", f"IMAP connection to {where} refused")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "certificate not trusted"
        return ImapError(
            "tls",
            f"TLS certificate of {where} rejected: {reason} (set imap.ca_file for a private CA)",
        )
    if isinstance(exc, ssl.SSLError):
        return ImapError("tls", f"TLS with {where} failed: {exc.reason or exc}")
    if isinstance(exc, LoginError):
        said = _server_said(exc.args[0] if exc.args else "")
        return ImapError("login", f"login as {settings.username!r} refused by {where}: {said}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ImapError(
            "timeout", f"IMAP server {where} did not answer within {settings.timeout:g} s"
        )
    if isinstance(exc, IMAPClient.AbortError | ConnectionError | EOFError):
        return ImapError(
            "network", f"connection to {where} lost: {_one_line(str(exc)) or 'closed'}"
        )
    if isinstance(exc, IMAPClientError):
        return ImapError("protocol", f"IMAP server {where} said: {_one_line(str(exc))}")
    if isinstance(exc, OSError):
        return ImapError("network", f"network error with {where}: {exc.strerror or exc}")
    return ImapError("protocol", f"unexpected IMAP failure with {where}: {type(exc).__name__}")


class Connection(Corrections):
    """One logged-in IMAP session. Use as a context manager."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.client: IMAPClient | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.delimiter = "/"
        self.selected: Selected | None = None
        self.commands = 0  # rough count of commands sent, for summaries and benchmarks
        self.fetch_commands = 0
        self._known_folders: set[str] = set()  # label folders known to exist

    # -- connecting ----------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.settings.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def open(self) -> Connection:
        s = self.settings
        try:
            client = IMAPClient(
                s.host,
                port=s.port,
                ssl=s.tls == "implicit",
                ssl_context=self._context() if s.tls == "implicit" else None,
                timeout=s.timeout,
            )
            self.client = client
            with contextlib.suppress(OSError):
                client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if s.tls == "starttls":
                if not client.has_capability("STARTTLS"):
                    raise ImapError("tls", f"{s.host}:{s.port} does not offer STARTTLS")
                client.starttls(self._context())
            self._login(client)
            self.capabilities = frozenset(_text(c).upper() for c in client.capabilities())
            self.commands += 3
            if "ENABLE" in self.capabilities and "CONDSTORE" in self.capabilities:
                client.enable("CONDSTORE")
                self.commands += 1
            self.delimiter = self._find_delimiter()
        except BaseException as exc:
            self.close()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise describe(exc, s) from None
        return self

    def _login(self, client: IMAPClient) -> None:
        s = self.settings
        if s.oauth2_token is not None:
            token = s.oauth2_token()
            try:
                client.oauth2_login(s.username, token)
            except IMAPClientError as exc:
                # The server's XOAUTH2 error is base64 JSON; it never contains the token.
                raise LoginError(f"XOAUTH2 token refused ({_server_said(str(exc), 120)})") from None
            return
        if s.password is None:
            raise ImapError("login", "no IMAP password or OAuth2 token configured")
        client.login(s.username, s.password())

    def _find_delimiter(self) -> str:
        assert self.client is not None
        try:
            listed = self.client.list_folders("", "INBOX")
            self.commands += 1
            for _flags, delim, _name in listed:
                if delim:
                    return _text(delim)
        except IMAPClientError:
            pass
        return "/"

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()

    def __enter__(self) -> Connection:
        return self.open() if self.client is None else self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.client is None:
            raise ImapError("network", f"not connected to {self.settings.host}")
        self.commands += 1
        try:
            return fn(*args, **kwargs)
        except ImapError:
            raise
        except (IMAPClientError, OSError, EOFError) as exc:
            err = describe(exc, self.settings)
            if err.kind == "protocol":
                err = ImapError("protocol", f"{what}: {err}")
            raise err from None

    @property
    def is_open(self) -> bool:
        return self.client is not None

    @property
    def is_gmail(self) -> bool:
        return "X-GM-EXT-1" in self.capabilities

    @property
    def has_condstore(self) -> bool:
        return "CONDSTORE" in self.capabilities

    def special_folder(self, flag: bytes) -> str | None:
        assert self.client is not None
        found = self._call("LIST", self.client.find_special_folder, flag)
        return str(found) if found else None

    def folder_exists(self, folder: str) -> bool:
        assert self.client is not None
        return bool(self._call("LIST", self.client.folder_exists, folder))

    def status(self, folder: str) -> FolderStatus:
        assert self.client is not None
        what = [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"]
        if self.has_condstore:
            what.append(b"HIGHESTMODSEQ")
        try:
            info = self._call(f"STATUS {folder}", self.client.folder_status, folder, what)
        except ImapError as exc:
            if exc.kind == "protocol" and not self.folder_exists(folder):
                raise ImapError(
                    "folder", f"folder {folder!r} does not exist on the server"
                ) from None
            raise
        return FolderStatus(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=_int(info.get(b"UIDNEXT")),
            highest_modseq=_int(info.get(b"HIGHESTMODSEQ")),
            messages=_int(info.get(b"MESSAGES")),
        )

    def select(self, folder: str, readonly: bool) -> Selected:
        assert self.client is not None
        try:
            info = self._call(
                f"SELECT {folder}", self.client.select_folder, folder, readonly=readonly
            )
        except ImapError as exc:
            if exc.kind == "protocol":
                raise ImapError("folder", f"folder {folder!r} cannot be opened: {exc}") from None
            raise
        perm = info.get(b"PERMANENTFLAGS") or ()
        self.selected = Selected(
            folder=folder,
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=_int(info.get(b"UIDNEXT")),
            highest_modseq=_int(info.get(b"HIGHESTMODSEQ")),
            exists=int(info.get(b"EXISTS", 0)),
            permanent_flags=frozenset(_text(f) for f in perm),
            readonly=readonly,
        )
        return self.selected

    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above ``last_uid`` in the selected folder (``N:*`` also matches the
        highest UID when it is below N, so the result is filtered)."""
        assert self.client is not None
        found = self._call("UID SEARCH", self.client.search, ["UID", f"{last_uid + 1}:*"])
        return sorted(int(u) for u in found if int(u) > last_uid)

    def fetch(self, uids: Sequence[int], max_bytes: int) -> Iterator[Fetched]:
        """Fetch whole messages (only the first ``max_bytes`` of bigger ones)."""
        for group in self.fetch_groups(uids, max_bytes, FETCH_BYTES):
            yield from group
            group.clear()

    def fetch_groups(
        self, uids: Sequence[int], max_bytes: int, budget: int
    ) -> Iterator[list[Fetched]]:
        """Fetch messages in groups whose bytes add up to at most ``budget`` (a single
        message bigger than that is a group of its own), one FETCH per group.

        Sizes come first from one cheap ``RFC822.SIZE`` FETCH. Each group is asked for
        only when the caller comes back for it, so a caller that is done with a group
        before asking for the next (and empties the list) never holds more than
        ``budget`` bytes of mail at once, however big the batch."""
        assert self.client is not None
        if not uids:
            return
        extra = [b"X-GM-THRID"] if self.is_gmail else []
        meta = self._call(
            "UID FETCH",
            self.client.fetch,
            list(uids),
            [b"RFC822.SIZE", b"INTERNALDATE", b"FLAGS", *extra],
        )
        sizes = {u: min(int(meta[u].get(b"RFC822.SIZE", 0)), max_bytes) for u in uids if u in meta}
        full = {u for u in sizes if int(meta[u].get(b"RFC822.SIZE", 0)) <= max_bytes}
        part = f"BODY.PEEK[]<0.{max_bytes}>".encode()
        for chunk in by_bytes([u for u in uids if u in sizes], sizes, budget):
            small = [u for u in chunk if u in full]
            big = [u for u in chunk if u not in full]
            bodies: dict[int, bytes] = {}
            if small:
                self.fetch_commands += 1
                got = self._call("UID FETCH", self.client.fetch, small, [b"BODY.PEEK[]"])
                bodies.update((int(uid), item.get(b"BODY[]") or b"") for uid, item in got.items())
                del got
            if big:
                self.fetch_commands += 1
                got = self._call("UID FETCH", self.client.fetch, big, [part])
                bodies.update(
                    (
                        int(uid),
                        next((v for k, v in item.items() if k.startswith(b"BODY[]")), b"") or b"",
                    )
                    for uid, item in got.items()
                )
                del got
            group = [
                *self._fetched(small, meta, bodies, truncated=False),
                *self._fetched(big, meta, bodies, truncated=True),
            ]
            bodies.clear()
            yield group
            del group  # the caller is done with it: hold nothing while fetching the next

    @staticmethod
    def _fetched(
        uids: Sequence[int], meta: dict[Any, Any], bodies: dict[int, bytes], truncated: bool
    ) -> Iterator[Fetched]:
        for uid in uids:
            item = meta.get(uid)
            if item is None or uid not in bodies:
                continue  # expunged meanwhile: it will simply not be there next time either
            internal = item.get(b"INTERNALDATE")
            thrid = item.get(b"X-GM-THRID")
            yield Fetched(
                uid=uid,
                raw=bodies[uid],
                size=int(item.get(b"RFC822.SIZE", len(bodies[uid]))),
                internal_date=internal if isinstance(internal, datetime) else None,
                flags=frozenset(_text(f) for f in item.get(b"FLAGS", ())),
                gm_thrid=int(thrid) if thrid is not None else None,
                truncated=truncated,
            )

    # -- writing labels (add only) ------------------------------------------------

    def add_keywords(self, uids: Sequence[int], keywords: Sequence[str]) -> None:
        assert self.client is not None
        self._call(
            "UID STORE",
            self.client.add_flags,
            list(uids),
            [k.encode() for k in keywords],
            silent=True,
        )

    def add_gmail_labels(self, uids: Sequence[int], labels: Sequence[str]) -> None:
        assert self.client is not None
        self._call(
            "UID STORE X-GM-LABELS",
            self.client.add_gmail_labels,
            list(uids),
            list(labels),
            silent=False,  # not every server accepts +X-GM-LABELS.SILENT; the reply is small
        )

    def ensure_folder(self, folder: str) -> None:
        assert self.client is not None
        if folder in self._known_folders:
            return
        if self.folder_exists(folder):
            self._known_folders.add(folder)
            return
        try:
            self._call(f"CREATE {folder}", self.client.create_folder, folder)
        except ImapError:
            if not self.folder_exists(folder):  # created by someone else meanwhile is fine
                raise
        with contextlib.suppress(ImapError):
            self._call(f"SUBSCRIBE {folder}", self.client.subscribe_folder, folder)
        self._known_folders.add(folder)

    def copy(self, uids: Sequence[int], folder: str) -> None:
        assert self.client is not None
        self._call(f"UID COPY to {folder}", self.client.copy, list(uids), folder)

    def append(self, folder: str, raw: bytes, flags: Sequence[str]) -> None:
        """APPEND one message (the only thing the guard ever adds: a reply draft)."""
        assert self.client is not None
        self._call(
            f"APPEND to {folder}",
            self.client.append,
            folder,
            raw,
            flags=[f.encode() for f in flags],
        )

    def find_by_message_id(self, folder: str, message_id: str) -> bool:
        """Whether ``folder`` already holds a message with this Message-ID (EXAMINEs it;
        the caller re-selects its own folder afterwards). An id that is not a strict
        ``<local@domain>`` ASCII token (a sender wrote it) is not searched: False."""
        assert self.client is not None
        token = msgid.parse_one(message_id)
        if token is None:
            return False
        self.select(folder, readonly=True)
        found = self._call("UID SEARCH", self.client.search, ["HEADER", "Message-ID", token])
        return bool(found)

    # -- waiting for new mail (IDLE) ------------------------------------------------

    def idle_wait(
        self, renew: float, stop: Callable[[], bool] = lambda: False, poll: float = 1.0
    ) -> bool:
        """Wait in IDLE on the selected folder: True as soon as the server reports new
        mail (EXISTS or RECENT) or a message gone (EXPUNGE: perhaps dragged into a feedback
        folder, which the next scan takes at once), False once ``renew`` seconds have
        passed or ``stop()`` is
        true (looked at every ``poll`` seconds). IDLE is then ended with DONE, a round
        trip that proves the connection alive: a connection that died without a FIN fails
        it within the timeout. Raises ImapError when the server ends the session or the
        connection is closed or dead."""
        assert self.client is not None
        client = self.client
        self._call("IDLE", client.idle)
        renew_at = time.monotonic() + renew
        new_mail = False
        while not stop() and time.monotonic() < renew_at:
            try:
                responses = self._call("IDLE", client.idle_check, timeout=poll)
            except ValueError:  # imaplib reading from a socket cut meanwhile
                raise ImapError("network", "the IDLE connection was closed") from None
            for response in responses:
                if len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT", b"EXPUNGE"):
                    new_mail = True
                if response and response[0] == b"BYE":
                    raise ImapError("network", "the server ended the IDLE session")
            if new_mail:
                break
            if not responses and _peer_closed(client):
                # imapclient's idle_check() returns nothing at EOF: look ourselves
                raise ImapError("network", "the IDLE connection was closed")
        self._call("DONE", client.idle_done)
        return new_mail

    def cut(self) -> None:
        """Shut the socket down at once, without LOGOUT: a call blocked on this connection
        (in another thread) fails instead of waiting for a server that does not answer."""
        client = self.client
        if client is not None:
            with contextlib.suppress(Exception):  # it may be closing already
                client.shutdown()


def _peer_closed(client: IMAPClient) -> bool:
    """True when the other side has closed the connection (readable, but no data)."""
    try:
        sock = client.socket()
        readable, _w, _x = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):
            if sock.pending():
                return False
            # Peek at the TCP stream under TLS through a duplicate of the descriptor:
            # nothing is consumed, and an empty read means the peer sent its FIN.
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as raw:
                return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (OSError, ValueError):
        return True


FETCH_BYTES = 32 * 1024 * 1024  # message bytes asked for in one FETCH (bounds memory)


def by_bytes(uids: Sequence[int], sizes: dict[int, int], limit: int) -> Iterator[list[int]]:
    """Split ``uids`` into runs whose messages add up to at most ``limit`` bytes (a single
    bigger message is a run of its own)."""
    run: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if run and total + size > limit:
            yield run
            run, total = [], 0
        run.append(uid)
        total += size
    if run:
        yield run


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


SENT = imapclient.imapclient.SENT
DRAFTS = imapclient.imapclient.DRAFTS
