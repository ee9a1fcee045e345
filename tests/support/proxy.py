"""A fault-injecting TCP proxy on 127.0.0.1, between a client under test and a real server.

The guard connects to :attr:`FaultProxy.port`; every connection is relayed byte for byte to
the real server (Dovecot, the SMTP sink) until the test injects a fault:

- :meth:`~FaultProxy.cut`: close every live connection now;
- :meth:`~FaultProxy.cut_on`: close a connection when the client sends a command matching a
  pattern (e.g. ``b"UID FETCH"``), at its ``nth`` occurrence counted over all connections,
  after relaying ``reply_bytes`` bytes of what the server sends back (so a cut can land in
  the middle of a FETCH response, or right after the server executed a STORE but before
  the client read its ``OK``); ``reply_bytes=None`` drops the command unsent;
- :meth:`~FaultProxy.stall` / :meth:`~FaultProxy.stall_on`: stop relaying without closing
  anything (no FIN, no RST: a silently dead network path, as after a NAT timeout). What
  either side sends is read and thrown away;
- :meth:`~FaultProxy.stall_new`: accept new connections and never answer (a server that
  hangs after the TCP handshake);
- :meth:`~FaultProxy.refuse`: close the listening socket (connections are refused);
- :meth:`~FaultProxy.resume`: clear every fault; new connections are relayed again.

It counts connections and bytes, and keeps what clients sent (:meth:`~FaultProxy.count`),
e.g. to count login attempts. The client stream is only readable without TLS: point the
guard at the proxy with ``tls = "none"`` (allowed for loopback hosts); STARTTLS passes
through too, but commands after it cannot be matched.

Each proxy connects to the server from a loopback address of its own (127.0.x.y, not
127.0.0.1), so per-address defences of the server stay per test: Dovecot delays every login
from an address after failed ones, up to 15 s, correct passwords included.

Runs are deterministic given the seed: faults fire at byte and command positions, never at
times, and the only randomness (:meth:`~FaultProxy.pick`) comes from ``random.Random(seed)``.
Threads: one accepting, two per connection (one per direction), all daemons.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from support.closing import Closing

__all__ = ["CutRule", "FaultProxy"]

LOOPBACK = "127.0.0.1"
_CHUNK = 65536
_HISTORY_LIMIT = 1 << 20  # client bytes kept per connection, for count()

Action = Literal["cut", "stall"]
_sources = itertools.count(2)


def _next_source() -> str:
    """A loopback address no other proxy of this process uses (Linux routes 127/8 to lo)."""
    n = next(_sources)
    return f"127.0.{(n // 250) % 250}.{n % 250 + 2}"


@dataclass
class CutRule:
    """One armed fault: fires at the ``nth`` client command matching ``pattern``."""

    pattern: bytes
    nth: int = 1
    reply_bytes: int | None = 0
    action: Action = "cut"
    ignore_case: bool = False  # SMTP and IMAP commands are case-insensitive
    seen: int = 0
    fired: threading.Event = field(default_factory=threading.Event)  # the command was seen
    acted: threading.Event = field(default_factory=threading.Event)  # the cut/stall is done
    fired_on: int | None = None  # the connection number it fired on

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("empty pattern")
        if self.nth < 1:
            raise ValueError("nth counts from 1")


class _Pipe:
    """One relayed connection: the client's socket, the server's, and their fault state."""

    def __init__(self, number: int, client: socket.socket, server: socket.socket | None) -> None:
        self.number = number
        self.client = client
        self.server = server
        self.stalled = server is None
        self.closed = False
        self.tail = b""  # the client's last bytes, to match patterns split across reads
        self.history = bytearray()
        self.budget: int | None = None  # server bytes still relayed before ``then``
        self.then: Action = "cut"
        self.then_rule: CutRule | None = None

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.server) if s is not None]


class FaultProxy(Closing):
    """A loopback TCP proxy to ``target_host:target_port`` with faults on command.

    Use as a context manager or call :meth:`close`. ``reset``: cut with a TCP RST instead
    of a FIN. ``source_host``: the address it connects to the server from (default: a
    loopback address of its own).
    """

    def __init__(
        self,
        target_port: int,
        target_host: str = LOOPBACK,
        *,
        seed: int = 0,
        reset: bool = False,
        connect_timeout: float = 5.0,
        source_host: str | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.source_host = source_host or _next_source()
        self.seed = seed
        self.rng = random.Random(seed)
        self.reset = reset
        self.connect_timeout = connect_timeout
        self.connections = 0  # accepted, in total
        self.upstream_failures = 0  # accepted, but the server could not be reached
        self.bytes_up = 0  # client -> server, relayed
        self.bytes_down = 0  # server -> client, relayed
        self._lock = threading.RLock()
        self._pipes: list[_Pipe] = []
        self._rules: list[CutRule] = []
        self._stall_new = False
        self._closing = False
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )
        self._acceptor.start()

    # -- faults ----------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every live connection now; return how many were cut."""
        with self._lock:
            live = [p for p in self._pipes if not p.closed]
        for pipe in live:
            self._close(pipe, abort=True)
        return len(live)

    def cut_on(
        self,
        pattern: bytes,
        *,
        nth: int = 1,
        reply_bytes: int | None = 0,
        ignore_case: bool = False,
    ) -> CutRule:
        """Cut the connection that sends the ``nth`` command containing ``pattern``.

        ``reply_bytes``: relay the command and then this many bytes of the server's answer
        before cutting (0: cut right after relaying the command; the server may or may not
        get to run it). ``None``: cut without relaying the command at all. ``ignore_case``:
        match ``ehlo`` for ``EHLO`` (smtplib sends its commands in lower case).
        """
        return self._arm(CutRule(pattern, nth, reply_bytes, "cut", ignore_case))

    def stall_on(
        self, pattern: bytes, *, nth: int = 1, reply_bytes: int = 0, ignore_case: bool = False
    ) -> CutRule:
        """Like :meth:`cut_on`, but the connection goes silent instead of closing."""
        return self._arm(CutRule(pattern, nth, reply_bytes, "stall", ignore_case))

    def stall(self, pattern: bytes | None = None) -> int:
        """Stop relaying on every live connection (or on those whose client has sent
        ``pattern``); nothing is closed. Return how many went silent."""
        with self._lock:
            chosen = [
                p for p in self._pipes if not p.closed and (pattern is None or pattern in p.history)
            ]
            for pipe in chosen:
                pipe.stalled = True
        return len(chosen)

    def stall_new(self) -> None:
        """Accept new connections but never relay a byte of them."""
        with self._lock:
            self._stall_new = True

    def refuse(self) -> None:
        """Refuse new connections (the listening socket is closed; live ones go on)."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def resume(self) -> None:
        """Clear every armed rule, accept and relay new connections again (stalled
        connections stay stalled: their bytes are gone)."""
        with self._lock:
            self._rules.clear()
            self._stall_new = False
            if self._listener is None and not self._closing:
                self._listen()

    def pick(self, choices: Sequence[int] | range) -> int:
        """A choice from the proxy's seeded generator (cut points that differ per seed)."""
        return self.rng.choice(choices)

    # -- counters --------------------------------------------------------------------------

    @property
    def live(self) -> int:
        with self._lock:
            return sum(1 for p in self._pipes if not p.closed)

    def count(self, pattern: bytes) -> int:
        """How often clients sent ``pattern``, over all connections so far."""
        with self._lock:
            return sum(bytes(p.history).count(pattern) for p in self._pipes)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"proxy: {what} did not happen within {timeout:g} s")
            time.sleep(0.01)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self.refuse()
        self.cut()
        self._acceptor.join(timeout=5)

    def __repr__(self) -> str:
        return (
            f"<FaultProxy :{self.port} -> {self.target[0]}:{self.target[1]} "
            f"{self.connections} connections, {self.live} live>"
        )

    # -- internals -------------------------------------------------------------------------

    def _arm(self, rule: CutRule) -> CutRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))  # the same port again after refuse()
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock

    def _accept_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(listener, selectors.EVENT_READ)
                    if not sel.select(timeout=0.05):
                        continue
                client, _addr = listener.accept()
            except (OSError, ValueError):  # closed by refuse() meanwhile
                continue
            self._start_pipe(client)

    def _start_pipe(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            number = self.connections
            stall = self._stall_new
        server: socket.socket | None = None
        if not stall:
            try:
                server = socket.create_connection(
                    self.target, timeout=self.connect_timeout, source_address=(self.source_host, 0)
                )
                server.settimeout(None)
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                with self._lock:
                    self.upstream_failures += 1
                # The server is down: the client sees its connection closed at once.
                _abort(client)
                return
        pipe = _Pipe(number, client, server)
        with self._lock:
            self._pipes.append(pipe)
        threading.Thread(
            target=self._relay_up, args=(pipe,), name=f"proxy-up-{number}", daemon=True
        ).start()
        if server is not None:
            threading.Thread(
                target=self._relay_down, args=(pipe,), name=f"proxy-down-{number}", daemon=True
            ).start()

    def _receive(self, pipe: _Pipe, sock: socket.socket) -> bytes | None:
        """The next chunk ``sock`` sends; None once it is closed (the pipe closed too)."""
        try:
            data = sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._close(pipe, abort=False)
            return None
        return data

    def _relay_up(self, pipe: _Pipe) -> None:
        while (data := self._receive(pipe, pipe.client)) is not None:
            with self._lock:
                if pipe.closed:
                    return
                if len(pipe.history) < _HISTORY_LIMIT:
                    pipe.history += data
                if pipe.stalled:
                    continue
                rule = self._match(pipe, data)
                forward = rule is None or rule.reply_bytes is not None
            if forward and not self._send(pipe, pipe.server, data):
                return
            if forward:
                with self._lock:
                    self.bytes_up += len(data)
            if rule is None:
                continue
            if rule.reply_bytes is None or (rule.reply_bytes == 0 and rule.action == "cut"):
                rule.acted.set()
                self._close(pipe, abort=True)
                if rule.reply_bytes is None:
                    return
            elif rule.reply_bytes == 0:
                with self._lock:
                    pipe.stalled = True
                rule.acted.set()

    def _relay_down(self, pipe: _Pipe) -> None:
        assert pipe.server is not None
        while (data := self._receive(pipe, pipe.server)) is not None:
            with self._lock:
                if pipe.closed:
                    return
                if pipe.stalled:
                    continue
                then: Action | None = None
                rule: CutRule | None = None
                if pipe.budget is not None:
                    data = data[: pipe.budget]
                    pipe.budget -= len(data)
                    if pipe.budget == 0:
                        then, pipe.budget = pipe.then, None
                        if then == "stall":
                            pipe.stalled = True  # before the lock is released
                            rule, pipe.then_rule = pipe.then_rule, None
            if data and not self._send(pipe, pipe.client, data):
                return
            with self._lock:
                self.bytes_down += len(data)
            if rule is not None:
                rule.acted.set()
            if then == "cut":
                self._close(pipe, abort=True)  # sets the rule's ``acted`` first
                return

    def _match(self, pipe: _Pipe, data: bytes) -> CutRule | None:
        """The rule this chunk fires, if any (called with the lock held)."""
        tail = pipe.tail
        longest = max((len(r.pattern) for r in self._rules), default=1)
        pipe.tail = (tail + data)[-(longest - 1) :] if longest > 1 else b""
        fired: CutRule | None = None
        for rule in list(self._rules):
            # Occurrences that end inside this chunk: the tail is one byte short of a match.
            keep = len(rule.pattern) - 1
            window = (tail[-keep:] if keep else b"") + data
            if rule.ignore_case:
                hits = window.lower().count(rule.pattern.lower())
            else:
                hits = window.count(rule.pattern)
            if not hits:
                continue
            rule.seen += hits
            if rule.seen >= rule.nth and fired is None:
                fired = rule
                rule.fired_on = pipe.number
                self._rules.remove(rule)
                if rule.reply_bytes:
                    pipe.budget = rule.reply_bytes
                    pipe.then = rule.action
                    pipe.then_rule = rule
                rule.fired.set()
        return fired

    def _send(self, pipe: _Pipe, sock: socket.socket | None, data: bytes) -> bool:
        if sock is None:
            return False
        try:
            sock.sendall(data)
        except OSError:
            self._close(pipe, abort=False)
            return False
        return True

    def _close(self, pipe: _Pipe, *, abort: bool) -> None:
        with self._lock:
            if pipe.closed:
                return
            pipe.closed = True
            pending, pipe.then_rule = pipe.then_rule, None
        if pending is not None:  # closed before its reply budget ran out: nothing left to do
            pending.acted.set()
        for sock in pipe.sockets():
            if abort and self.reset:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the other relay thread's recv
                sock.close()


def _abort(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
