"""Throwaway real servers on 127.0.0.1 for the integration tests.

Plain Python (no pytest): ``tests/conftest.py`` wraps these in fixtures, and a script or a REPL
can use them directly, e.g. ``with Dovecot() as imap: ...``.

- :class:`Dovecot`: Dovecot 2.3 IMAP (plain/STARTTLS and implicit TLS) and LMTP, a static passdb
  (any user name logs in with one password), Maildir under a fresh temp dir.
- :class:`Hoodiecrow`: hoodiecrow-imap 2.1.0 with Gmail's X-GM-EXT-1 (labels, message and
  thread ids), in memory, one account (testuser/testpass).
- :class:`Postgres`: a PostgreSQL cluster of its own, ``fsync=off``, user ``guard``, trust auth.
- :class:`SmtpSink`: an in-process aiosmtpd server that keeps what it receives.

The Debian packages and hoodiecrow are installed by ``tests/support/install-test-servers``
(``make test`` runs it). Every server binds free ports on 127.0.0.1, runs in a temp dir of its
own, and is stopped by ``close()``, by the ``with`` block, at interpreter exit, or, for the child
processes, by the kernel when the process that started them dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import email
import email.message
import email.policy
import grp
import itertools
import os
import pwd
import re
import selectors
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from imapclient import IMAPClient

from support.closing import Closing

__all__ = [
    "INSTALL_HINT",
    "CertPair",
    "Dovecot",
    "Hoodiecrow",
    "MailAccount",
    "Postgres",
    "ServerError",
    "SmtpMessage",
    "SmtpSink",
    "make_cert",
]

LOOPBACK = "127.0.0.1"
SUPPORT_DIR = Path(__file__).resolve().parent
REPO_DIR = SUPPORT_DIR.parents[1]
CACHE_DIR = Path(os.environ.get("INBOX_GUARD_TEST_CACHE") or REPO_DIR / ".cache" / "test-servers")
INSTALL_HINT = "run tests/support/install-test-servers"
IS_ROOT = os.geteuid() == 0


class ServerError(RuntimeError):
    """A test server is not installed, did not start, or refused a helper's request."""


# --------------------------------------------------------------------------------------------
# Processes, ports, temp dirs


def _require(binary: str, what: str) -> str:
    """Return the path of ``binary`` on PATH or in /usr/sbin (not on a user's PATH), or raise."""
    found = shutil.which(binary, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        raise ServerError(f"{what} not installed ({binary} not found): {INSTALL_HINT}")
    return found


def _die_with_us(sig: signal.Signals, command: list[str]) -> list[str]:
    """``command`` run so that the kernel sends it ``sig`` when the thread that starts it dies.

    util-linux ``setpriv --pdeathsig`` (Debian: always installed) sets PR_SET_PDEATHSIG and
    execs the command, so a test run killed with SIGKILL leaves no server behind. (No
    ``preexec_fn``: it is unsafe while other threads run, such as the SMTP sink's.)
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return command
    return [setpriv, "--pdeathsig", sig.name.removeprefix("SIG"), "--", *command]


def _free_ports(count: int) -> list[int]:
    """Distinct TCP ports that are free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _can_listen(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as asyncio binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


_OWNER_FILE = ".inbox-guard-test-owner"
_swept: set[Path] = set()


def _sweep(parent: Path) -> None:
    """Remove temp dirs left by test processes that were killed (their owner pid is gone)."""
    if parent in _swept:
        return
    _swept.add(parent)
    for owner in parent.glob(f"ig*-*/{_OWNER_FILE}"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(owner.read_text())
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(owner.parent, ignore_errors=True)


def _make_dir(prefix: str) -> Path:
    """A fresh temp dir, mode 0755, under /dev/shm when possible (fast, short paths)."""
    shm = Path("/dev/shm")
    usable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
    parent = shm if usable else Path(tempfile.gettempdir())
    _sweep(parent)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    (path / _OWNER_FILE).write_text(str(os.getpid()))
    return path


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen[Any] | None, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig``, wait up to ``timeout``; then SIGKILL and wait again."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def _read_greeting(host: str, port: int, timeout: float, context: ssl.SSLContext | None) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if context is None:
            return raw.recv(200)
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.recv(200)


def _wait_for_greeting(
    name: str,
    proc: subprocess.Popen[Any],
    port: int,
    timeout: float,
    log: Callable[[], str],
    context: ssl.SSLContext | None = None,
) -> None:
    """Wait until ``port`` answers with an IMAP ``* OK`` greeting; raise with the log if not."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while True:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with status {proc.returncode} at start:\n{log()}")
        try:
            greeting = _read_greeting(LOOPBACK, port, 2.0, context)
            if greeting.startswith(b"* OK"):
                return
            last_error = f"unexpected greeting {greeting[:80]!r}"
        except OSError as exc:
            last_error = str(exc)
        if time.monotonic() > deadline:
            raise ServerError(
                f"{name} did not greet on {LOOPBACK}:{port} within {timeout:g} s "
                f"({last_error}):\n{log()}"
            )
        time.sleep(0.02)


class _Managed(Closing):
    """Closes every live server at interpreter exit."""

    _live: ClassVar[set[_Managed]] = set()
    _lock = threading.Lock()

    def _register(self) -> None:
        with _Managed._lock:
            _Managed._live.add(self)

    def _unregister(self) -> None:
        with _Managed._lock:
            _Managed._live.discard(self)

    def __repr__(self) -> str:
        state = "running" if getattr(self, "running", False) else "stopped"
        where = f"{getattr(self, 'host', LOOPBACK)}:{getattr(self, 'port', '?')}"
        return f"<{type(self).__name__} {where} {state}>"


@atexit.register
def _close_all() -> None:
    with _Managed._lock:
        live = list(_Managed._live)
    for server in live:
        with contextlib.suppress(Exception):
            server.close()


class _Process(_Managed):
    """A server run as a child process with a temporary directory of its own (``dir``,
    its log at ``log``): what Dovecot, Hoodiecrow and PostgreSQL have in common."""

    _proc: subprocess.Popen[bytes] | None
    _started_once: bool
    dir: Path
    log: Path
    timeout: float

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _start_on_free_ports(self, timeout: float | None) -> None:
        """Start unless running; before the first start succeeds, a port another process
        took meanwhile is replaced by a free one (three tries)."""
        if self.running:
            return
        attempts = 1 if self._started_once else 3  # fresh ports only before the first start
        for attempt in range(attempts):
            try:
                self._start_once(self.timeout if timeout is None else timeout)
                self._started_once = True
                return
            except ServerError:
                if attempt + 1 == attempts or not self._port_taken():
                    raise
                self._new_ports()

    def _start_once(self, timeout: float) -> None:
        raise NotImplementedError

    def _port_taken(self) -> bool:
        raise NotImplementedError

    def _new_ports(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop and remove everything (the temporary directory, stored mail or data)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._unregister()

    def log_text(self) -> str:
        """What the server logged."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""


# --------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class CertPair:
    """A self-signed certificate for CN=localhost, SAN DNS:localhost, IP:127.0.0.1.

    The certificate doubles as the CA file that clients trust.
    """

    cert: Path
    key: Path

    @property
    def ca_file(self) -> Path:
        return self.cert

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this certificate (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def copy_to(self, directory: Path) -> CertPair:
        """Copies of both files in ``directory`` (readable by other users: 0644)."""
        copy = CertPair(directory / "cert.pem", directory / "key.pem")
        for source, target in ((self.cert, copy.cert), (self.key, copy.key)):
            shutil.copyfile(source, target)
            target.chmod(0o644)
        return copy


def make_cert(directory: Path | str) -> CertPair:
    """Write ``cert.pem`` and ``key.pem`` (P-256, 30 days) into ``directory`` with openssl."""
    openssl = _require("openssl", "openssl")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "cert.pem", directory / "key.pem")
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "30", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(pair.key), "-out", str(pair.cert),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise ServerError(f"openssl could not make a certificate: {result.stderr.strip()}")
    pair.key.chmod(0o644)  # throwaway key; the servers' unprivileged processes must read it
    return pair


# --------------------------------------------------------------------------------------------
# IMAP helpers shared by Dovecot and Hoodiecrow


def _nodelay(client: IMAPClient) -> IMAPClient:
    with contextlib.suppress(OSError):
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def _uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition(":")
        low, high = sorted((int(first), int(last or first)))
        uids.extend(range(low, high + 1))
    return uids


def _appended_uids(response: Any) -> list[int]:
    """UIDs from an APPEND response: ``append()`` gives the text, ``multiappend()`` (typ, data)."""
    if isinstance(response, tuple):
        response = b" ".join(item for item in response[1] if isinstance(item, bytes))
    text = response.decode() if isinstance(response, bytes) else str(response)
    match = re.search(r"APPENDUID \d+ ([\d:,]+)", text)
    if not match:
        raise ServerError(f"no APPENDUID in the APPEND response {text!r}")
    return _uid_set(match.group(1))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _all_uids(client: IMAPClient) -> list[int]:
    return sorted(int(uid) for uid in client.search("ALL"))


def _flags_of(client: IMAPClient, mailbox: str) -> dict[int, set[str]]:
    client.select_folder(mailbox, readonly=True)
    uids = _all_uids(client)
    if not uids:
        return {}
    fetched = client.fetch(uids, ["FLAGS"])
    return {
        uid: {_text(flag) for flag in data[b"FLAGS"]} - {"\\Recent"}
        for uid, data in fetched.items()
    }


def _messages_of(client: IMAPClient, mailbox: str) -> dict[int, bytes]:
    client.select_folder(mailbox, readonly=True)
    uids = _all_uids(client)
    if not uids:
        return {}
    fetched = client.fetch(uids, ["BODY.PEEK[]"])
    return {uid: bytes(data[b"BODY[]"]) for uid, data in sorted(fetched.items())}


def _append_batches(
    client: IMAPClient,
    mailbox: str,
    messages: Sequence[bytes],
    flags: Iterable[str],
    batch: int,
) -> list[int]:
    flag_list = list(flags)
    uids: list[int] = []
    multi = client.has_capability("MULTIAPPEND")
    for start in range(0, len(messages), batch if multi else 1):
        chunk = messages[start : start + (batch if multi else 1)]
        if multi:
            items = [{"msg": raw, "flags": flag_list} for raw in chunk]
            response = client.multiappend(mailbox, items)
        else:
            response = client.append(mailbox, chunk[0], flags=flag_list)
        uids.extend(_appended_uids(response))
    return uids


# --------------------------------------------------------------------------------------------
# Dovecot

# Sent, Drafts, Junk and Trash exist (subscribed) in every new user's mailbox.
_SPECIAL_MAILBOXES = "".join(
    f"  mailbox {name} {{\n    special_use = \\{name}\n    auto = subscribe\n  }}\n"
    for name in ("Sent", "Drafts", "Junk", "Trash")
)
_DOVECOT_CONF = """\
# Written by tests/support/servers.py for one throwaway test instance.
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
listen = 127.0.0.1
protocols = imap lmtp
{identity}
ssl = yes
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = 1
postmaster_address = postmaster@localhost

passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = home={dir}/mail/%u
}}

namespace inbox {{
  inbox = yes
  separator = /
{special_mailboxes}}}

protocol imap {{
  mail_max_userip_connections = 200
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
{login_chroot}}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
# anvil's auth penalty holds a failed login from one IP back for 2, 4, 8, then 15 s. The
# tests log in with wrong passwords on purpose and nothing they check depends on that
# delay (auth_failure_delay above is the same choice): off.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
{anvil_chroot}}}"""


class Dovecot(_Process):
    """A Dovecot instance of its own on 127.0.0.1 (IMAP, IMAPS, LMTP), Maildir in a temp dir.

    Any user name logs in with :attr:`password`; :meth:`new_user` hands out fresh, empty ones.
    :meth:`stop` then :meth:`start` brings it back on the same ports with the same mail.
    """

    host = LOOPBACK

    def __init__(
        self,
        *,
        password: str = "guard-test-password",
        cert: CertPair | None = None,
        start: bool = True,
        timeout: float = 15.0,
    ) -> None:
        self.dovecot = _require("dovecot", "dovecot")
        self.doveadm = _require("doveadm", "dovecot")
        self.password = password
        self.timeout = timeout
        self.dir = _make_dir("igdc-")
        self.mail_root = self.dir / "mail"
        self.conf = self.dir / "dovecot.conf"
        self.log = self.dir / "dovecot.log"
        self._stderr = self.dir / "dovecot.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._users = itertools.count(1)
        self._started_once = False
        self._register()
        try:
            pair = cert.copy_to(self.dir) if cert else make_cert(self.dir)
            self.ca_file: Path = pair.cert
            self.cert = pair
            self.mail_root.mkdir()
            for sub in ("run", "state"):
                (self.dir / sub).mkdir()
            if IS_ROOT:
                shutil.chown(self.mail_root, "nobody", self._nogroup())
            self.port, self.tls_port, self.lmtp_port = _free_ports(3)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def _nogroup() -> str:
        for name in ("nogroup", "nobody"):
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                return name
        raise ServerError("neither group nogroup nor nobody exists for mail_gid")

    def _write_conf(self) -> None:
        if IS_ROOT:
            identity = f"mail_uid = nobody\nmail_gid = {self._nogroup()}"
            login_chroot = anvil_chroot = ""
        else:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            identity = (
                f"default_internal_user = {user}\ndefault_internal_group = {group}\n"
                f"default_login_user = {user}"
            )
            login_chroot = "  chroot =\n"
            anvil_chroot = "  chroot =\n"
        self.conf.write_text(
            _DOVECOT_CONF.format(
                dir=self.dir,
                identity=identity,
                password=self.password,
                port=self.port,
                tls_port=self.tls_port,
                lmtp_port=self.lmtp_port,
                login_chroot=login_chroot,
                anvil_chroot=anvil_chroot,
                special_mailboxes=_SPECIAL_MAILBOXES,
            )
        )

    def start(self, timeout: float | None = None) -> None:
        """Start (again) on the same ports; returns once the IMAP greeting arrives."""
        self._start_on_free_ports(timeout)

    def _port_taken(self) -> bool:
        return "in use" in self._diagnostics()

    def _new_ports(self) -> None:
        self.port, self.tls_port, self.lmtp_port = _free_ports(3)

    def _start_once(self, timeout: float) -> None:
        self._write_conf()
        with self._stderr.open("ab") as stderr:
            self._proc = subprocess.Popen(
                _die_with_us(signal.SIGTERM, [self.dovecot, "-F", "-c", str(self.conf)]),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        try:
            _wait_for_greeting("dovecot", self._proc, self.port, timeout, self._diagnostics)
        except ServerError:
            _stop_process(self._proc, signal.SIGTERM, 5)
            raise

    def _diagnostics(self) -> str:
        return "\n".join(filter(None, [_tail(self._stderr), _tail(self.log)]))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; the mail store and the ports stay for :meth:`start`."""
        _stop_process(self._proc, signal.SIGTERM, timeout)
        self._proc = None

    def log_text(self) -> str:
        """Dovecot's log of every start so far, after what it printed before logging began."""
        parts = []
        for path in (self._stderr, self.log):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    # -- users and seeding -------------------------------------------------------------------

    def new_user(self, prefix: str = "user") -> str:
        """A user name nobody used on this server yet (its mailbox is empty)."""
        stem = re.sub(r"[^a-z0-9]+", "-", prefix.lower()).strip("-")[:40] or "user"
        while True:
            user = f"{stem}-{next(self._users)}"
            if not (self.mail_root / user).exists():
                return user

    def account(self, prefix: str = "user") -> MailAccount:
        """A fresh user of this server, with the helpers bound to it."""
        return MailAccount(self, self.new_user(prefix))

    def doveadm_run(self, *args: str, input: bytes | None = None) -> str:
        """Run ``doveadm -c CONF ARGS...``; return stdout, raise :class:`ServerError` on failure."""
        result = subprocess.run(
            [self.doveadm, "-c", str(self.conf), *args],
            input=input,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"doveadm {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def create_mailbox(self, user: str, mailbox: str) -> None:
        """Create (and subscribe) ``mailbox``; no error if it exists."""
        try:
            self.doveadm_run("mailbox", "create", "-s", "-u", user, mailbox)
        except ServerError as exc:
            if "already exists" not in str(exc):
                raise

    def _uidnext(self, user: str, mailbox: str) -> int:
        status = self.doveadm_run("mailbox", "status", "-u", user, "uidnext", mailbox)
        return int(status.split("uidnext=")[1].split()[0])

    def save(self, user: str, raw: bytes, mailbox: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """Store one message server-side (``doveadm save``), set ``flags``; return its UID.

        The mailbox is created when missing. Assumes nothing else appends to the same
        mailbox at the same moment (the UID is the mailbox's UIDNEXT before the save).
        """
        try:
            uid = self._uidnext(user, mailbox)
        except ServerError as exc:
            if "doesn't exist" not in str(exc):
                raise
            self.create_mailbox(user, mailbox)
            uid = self._uidnext(user, mailbox)
        self.doveadm_run("save", "-u", user, "-m", mailbox, input=raw)
        flag_list = list(flags)
        if flag_list:
            self.doveadm_run(
                "flags", "add", "-u", user, " ".join(flag_list), "mailbox", mailbox, "uid", str(uid)
            )
        return uid

    def append_many(
        self,
        user: str,
        messages: Sequence[bytes],
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
        batch: int = 500,
    ) -> list[int]:
        """APPEND many messages over one IMAP connection (MULTIAPPEND); return their UIDs."""
        with self.session(user) as client:
            if mailbox.upper() != "INBOX" and not client.folder_exists(mailbox):
                client.create_folder(mailbox)
                client.subscribe_folder(mailbox)
            return _append_batches(client, mailbox, messages, flags, batch)

    def deliver(self, user: str, raw: bytes, sender: str = "sender@example.com") -> None:
        """Deliver one message to ``user``'s INBOX over LMTP (as a mail server would)."""
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=self.timeout) as lmtp:
            refused = lmtp.sendmail(sender, [user], raw)
        if refused:
            raise ServerError(f"LMTP refused {user}: {refused}")

    # -- independent IMAP connections for assertions -----------------------------------------

    def client(self, user: str, security: str = "starttls", timeout: float = 10.0) -> IMAPClient:
        """A new, logged-in IMAP connection for ``user``; the caller logs out.

        ``security``: ``"starttls"`` (plain port + STARTTLS, the default), ``"tls"``
        (implicit-TLS port) or ``"plain"`` (no TLS; Dovecot allows it on loopback).
        The TLS variants verify the certificate against :attr:`ca_file`.
        """
        context = self.cert.client_context()
        if security == "tls":
            client = IMAPClient(
                self.host, self.tls_port, ssl=True, ssl_context=context, timeout=timeout
            )
        elif security in ("starttls", "plain"):
            client = IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
            if security == "starttls":
                client.starttls(context)
        else:
            raise ValueError(f"security must be starttls, tls or plain, not {security!r}")
        client.login(user, self.password)
        return _nodelay(client)

    @contextlib.contextmanager
    def session(self, user: str, security: str = "starttls") -> Iterator[IMAPClient]:
        """:meth:`client` that logs out at the end of the ``with`` block."""
        client = self.client(user, security)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def flags(self, user: str, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags and keywords (``\\Seen``, ``$Phishing``); not the session flag \\Recent."""
        with self.session(user) as client:
            return _flags_of(client, mailbox)

    def messages(self, user: str, mailbox: str = "INBOX") -> dict[int, bytes]:
        """UID -> raw message, read without setting \\Seen."""
        with self.session(user) as client:
            return _messages_of(client, mailbox)

    def mailboxes(self, user: str) -> list[str]:
        """The user's mailbox names as LIST shows them (separator ``/``)."""
        with self.session(user) as client:
            return [name for _flags, _sep, name in client.list_folders()]

    def uidvalidity(self, user: str, mailbox: str = "INBOX") -> int:
        with self.session(user) as client:
            return int(client.folder_status(mailbox, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def recreate_mailbox(
        self, user: str, mailbox: str = "INBOX", messages: Sequence[bytes] | None = None
    ) -> int:
        """Delete and recreate ``mailbox`` so that its UIDVALIDITY changes; return the new one.

        The mailbox is then filled with ``messages`` or, when None, with its former messages
        and flags in their former order, under new UIDs counting from 1. Other folders use IMAP
        DELETE and CREATE; INBOX cannot be deleted, so it is emptied and its UID list and index
        files are removed, as when a server loses them. Log out your own connections first:
        Dovecot may drop sessions that have the mailbox selected.
        """
        is_inbox = mailbox.upper() == "INBOX"
        with self.session(user) as client:
            old = int(client.folder_status(mailbox, [b"UIDVALIDITY"])[b"UIDVALIDITY"])
            refill: list[tuple[bytes, list[str]]]
            if messages is None:
                client.select_folder(mailbox, readonly=True)
                uids = _all_uids(client)
                fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
                refill = [
                    (
                        bytes(fetched[uid][b"BODY[]"]),
                        [_text(f) for f in fetched[uid][b"FLAGS"] if f != b"\\Recent"],
                    )
                    for uid in sorted(fetched)
                ]
                client.unselect_folder()
            else:
                refill = [(raw, []) for raw in messages]
            if is_inbox:
                client.select_folder(mailbox)
                uids = _all_uids(client)
                if uids:
                    client.delete_messages(uids)
                    client.expunge()
                client.unselect_folder()
            else:
                client.delete_folder(mailbox)
        if is_inbox:
            maildir = self.mail_root / user / "Maildir"
            for path in maildir.glob("dovecot*"):
                if path.name == "dovecot-uidlist" or path.name.startswith(
                    ("dovecot.index", "dovecot.list.index")
                ):
                    path.unlink()
        with self.session(user) as client:
            if not is_inbox:
                client.create_folder(mailbox)
                client.subscribe_folder(mailbox)
            for raw, flags in refill:
                client.append(mailbox, raw, flags=flags)
            new = int(client.folder_status(mailbox, [b"UIDVALIDITY"])[b"UIDVALIDITY"])
        if new == old:
            raise ServerError(f"UIDVALIDITY of {mailbox} stayed {old} after recreating it")
        return new


T = TypeVar("T")


class _OfServer(Generic[T]):
    """A read-only attribute of the account's server: ``account.port`` is ``server.port``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, account: MailAccount, owner: type | None = None) -> T:
        return getattr(account.server, self.name)  # type: ignore[no-any-return]


@dataclass
class MailAccount:
    """One Dovecot user with the server's helpers bound to it (the ``mailbox`` fixture)."""

    server: Dovecot
    user: str

    host = _OfServer[str]()
    port = _OfServer[int]()
    tls_port = _OfServer[int]()
    lmtp_port = _OfServer[int]()
    ca_file = _OfServer[Path]()
    password = _OfServer[str]()

    def save(self, raw: bytes, mailbox: str = "INBOX", flags: Iterable[str] = ()) -> int:
        return self.server.save(self.user, raw, mailbox, flags)

    def append_many(
        self, messages: Sequence[bytes], mailbox: str = "INBOX", flags: Iterable[str] = ()
    ) -> list[int]:
        return self.server.append_many(self.user, messages, mailbox, flags)

    def deliver(self, raw: bytes, sender: str = "sender@example.com") -> None:
        self.server.deliver(self.user, raw, sender)

    def client(self, security: str = "starttls", timeout: float = 10.0) -> IMAPClient:
        return self.server.client(self.user, security, timeout)

    def session(self, security: str = "starttls") -> contextlib.AbstractContextManager[IMAPClient]:
        return self.server.session(self.user, security)

    def flags(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        return self.server.flags(self.user, mailbox)

    def messages(self, mailbox: str = "INBOX") -> dict[int, bytes]:
        return self.server.messages(self.user, mailbox)

    def mailboxes(self) -> list[str]:
        return self.server.mailboxes(self.user)

    def create_mailbox(self, mailbox: str) -> None:
        self.server.create_mailbox(self.user, mailbox)

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        return self.server.uidvalidity(self.user, mailbox)

    def recreate_mailbox(
        self, mailbox: str = "INBOX", messages: Sequence[bytes] | None = None
    ) -> int:
        return self.server.recreate_mailbox(self.user, mailbox, messages)

    def log_text(self) -> str:
        return self.server.log_text()


# --------------------------------------------------------------------------------------------
# Hoodiecrow (Gmail emulation)


class Hoodiecrow(_Process):
    """hoodiecrow-imap 2.1.0 as a Gmail stand-in on 127.0.0.1 (see ``gmail_server.js``).

    In memory: each :meth:`start` is an empty account (INBOX and ``[Gmail]/...`` folders),
    one user ``testuser``/``testpass``. Speaks X-GM-EXT-1: ``X-GM-MSGID``, ``X-GM-THRID``
    (the thread's first message's X-GM-MSGID, by Message-ID/References/In-Reply-To),
    ``X-GM-LABELS`` (FETCH, STORE, SEARCH). With ``tls=True`` it listens with implicit TLS
    (certificate :attr:`ca_file`), as imap.gmail.com:993 does.
    """

    host = LOOPBACK
    username = "testuser"
    password = "testpass"
    script = SUPPORT_DIR / "gmail_server.js"
    modules = CACHE_DIR / "hoodiecrow" / "node_modules"

    def __init__(
        self,
        *,
        tls: bool = False,
        cert: CertPair | None = None,
        start: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.node = _require("node", "node")
        if not (self.modules / "hoodiecrow-imap" / "package.json").is_file():
            raise ServerError(f"hoodiecrow-imap not installed in {self.modules}: {INSTALL_HINT}")
        self.tls = tls
        self.timeout = timeout
        self.port = 0
        self.dir = _make_dir("ighc-")
        self.log = self.dir / "hoodiecrow.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._register()
        try:
            self.cert: CertPair | None = None
            self.ca_file: Path | None = None
            if tls:
                self.cert = cert.copy_to(self.dir) if cert else make_cert(self.dir)
                self.ca_file = self.cert.cert
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    def start(self, timeout: float | None = None) -> None:
        """Start an empty server (on the former port when restarted); wait for its greeting."""
        if self.running:
            return
        timeout = self.timeout if timeout is None else timeout
        command = [self.node, str(self.script), str(self.port)]
        if self.cert is not None:
            command += [str(self.cert.cert), str(self.cert.key)]
        env = {**os.environ, "NODE_PATH": str(self.modules), "NODE_NO_WARNINGS": "1"}
        with self.log.open("ab") as log:
            self._proc = proc = subprocess.Popen(
                _die_with_us(signal.SIGTERM, command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.dir,
                env=env,
            )
        try:
            assert proc.stdout is not None
            line = self._read_line(proc, timeout)
            match = re.fullmatch(rb"listening (\d+)\s*", line)
            if not match:
                raise ServerError(f"hoodiecrow did not start ({line!r}):\n{_tail(self.log)}")
            self.port = int(match.group(1))
            context = self.cert.client_context() if self.cert else None
            _wait_for_greeting(
                "hoodiecrow", proc, self.port, timeout, lambda: _tail(self.log), context
            )
        except BaseException:
            self.stop()
            raise

    def _read_line(self, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise ServerError(
                        f"hoodiecrow did not start within {timeout:g} s:\n{_tail(self.log)}"
                    )
                chunk = os.read(proc.stdout.fileno(), 200)
                if not chunk:
                    proc.wait(5)
                    raise ServerError(
                        f"hoodiecrow exited with status {proc.returncode} at start:\n"
                        f"{_tail(self.log)}"
                    )
                data += chunk
        return data

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server; its mail is gone (the port stays reserved for :meth:`start`)."""
        proc, self._proc = self._proc, None
        _stop_process(proc, signal.SIGTERM, timeout)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    def client(self, timeout: float = 10.0) -> IMAPClient:
        """A new, logged-in IMAP connection (TLS when the server has it); the caller logs out."""
        if self.cert is not None:
            client = IMAPClient(
                self.host,
                self.port,
                ssl=True,
                ssl_context=self.cert.client_context(),
                timeout=timeout,
            )
        else:
            client = IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
        client.login(self.username, self.password)
        return _nodelay(client)

    @contextlib.contextmanager
    def session(self) -> Iterator[IMAPClient]:
        client = self.client()
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, raw: bytes, mailbox: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """APPEND one message; return its UID."""
        with self.session() as client:
            return _appended_uids(client.append(mailbox, raw, flags=list(flags)))[0]

    def append_many(
        self, messages: Sequence[bytes], mailbox: str = "INBOX", flags: Iterable[str] = ()
    ) -> list[int]:
        with self.session() as client:
            return _append_batches(client, mailbox, messages, flags, 1)

    def flags(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        with self.session() as client:
            return _flags_of(client, mailbox)

    def labels(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """UID -> Gmail labels (``\\Inbox``, ``Guard/Scam``, ...)."""
        with self.session() as client:
            client.select_folder(mailbox, readonly=True)
            uids = _all_uids(client)
            if not uids:
                return {}
            return {uid: set(labels) for uid, labels in client.get_gmail_labels(uids).items()}

    def thread_ids(self, mailbox: str = "INBOX") -> dict[int, int]:
        """UID -> X-GM-THRID."""
        with self.session() as client:
            client.select_folder(mailbox, readonly=True)
            uids = _all_uids(client)
            if not uids:
                return {}
            fetched = client.fetch(uids, ["X-GM-THRID"])
            return {uid: int(data[b"X-GM-THRID"]) for uid, data in fetched.items()}

    def mailboxes(self) -> list[str]:
        with self.session() as client:
            return [name for _flags, _sep, name in client.list_folders()]


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` (not /usr/local/bin wrappers)."""
    candidates = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            candidates.append((int(path.parent.name), path))
    candidates = [(version, path) for version, path in candidates if (path / "postgres").is_file()]
    if not candidates:
        raise ServerError(
            f"postgresql not installed (no /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
        )
    return max(candidates)[1]


class Postgres(_Process):
    """A PostgreSQL cluster of its own on 127.0.0.1, user ``guard`` with trust auth, fsync off.

    The server runs in the foreground under this process (``postgres -D``, as the ``postgres``
    user when we are root), the same as ``pg_ctl start`` would run it but without detaching,
    so it cannot outlive the tests. :attr:`url` is for SQLAlchemy with psycopg 3.
    """

    host = LOOPBACK
    user = "guard"

    def __init__(self, *, start: bool = True, timeout: float = 30.0) -> None:
        self.bin_dir = _postgres_bin()
        self.timeout = timeout
        self.dir = _make_dir("igpg-")
        self.data_dir = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_ports(1)[0]
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._databases = itertools.count(1)
        self._register()
        try:
            if IS_ROOT:
                try:
                    pwd.getpwnam("postgres")
                except KeyError:
                    raise ServerError(
                        f"no postgres user to run PostgreSQL as: {INSTALL_HINT}"
                    ) from None
                shutil.chown(self.dir, "postgres", "postgres")
            self._run(
                str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            )  # fmt: skip
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    def _as_postgres(self) -> dict[str, Any]:
        return {"user": "postgres", "group": "postgres", "extra_groups": []} if IS_ROOT else {}

    def _run(self, *command: str) -> str:
        result = subprocess.run(
            command,
            capture_output=True,
            cwd=self.dir,
            timeout=60,
            check=False,
            **self._as_postgres(),
        )
        if result.returncode != 0:
            raise ServerError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).decode(errors='replace').strip()}"
            )
        output: bytes = result.stdout
        return output.decode(errors="replace")

    @property
    def url(self) -> str:
        """``postgresql+psycopg://guard@127.0.0.1:PORT/postgres`` (SQLAlchemy)."""
        return self.url_for("postgres")

    @property
    def dsn(self) -> str:
        """``postgresql://guard@127.0.0.1:PORT/postgres`` (libpq, psycopg.connect)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def start(self, timeout: float | None = None) -> None:
        """Start (again, on the same port and data); returns once it accepts connections."""
        self._start_on_free_ports(timeout)

    def _port_taken(self) -> bool:
        return "could not bind" in _tail(self.log)

    def _new_ports(self) -> None:
        self.port = _free_ports(1)[0]

    def _start_once(self, timeout: float) -> None:
        command = [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            if IS_ROOT:
                shutil.chown(self.log, "postgres", "postgres")
            self._proc = proc = subprocess.Popen(
                _die_with_us(signal.SIGQUIT, command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                **self._as_postgres(),
            )
        deadline = time.monotonic() + timeout
        pid_file = self.data_dir / "postmaster.pid"
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise ServerError(
                    f"postgres exited with status {proc.returncode} at start:\n{_tail(self.log)}"
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"postgres not ready within {timeout:g} s on port {self.port}:\n"
                    f"{_tail(self.log)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: rolls back open transactions, disconnects clients)."""
        _stop_process(self._proc, signal.SIGINT, timeout)
        self._proc = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (no Python driver needed); return its unaligned output."""
        return self._run(
            str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql,
        )  # fmt: skip

    def create_database(self, prefix: str = "test") -> str:
        """Create an empty database with a fresh name; return its SQLAlchemy URL."""
        stem = re.sub(r"[^a-z0-9]+", "_", prefix.lower()).strip("_")[:40] or "test"
        name = f"{stem}_{next(self._databases)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


# --------------------------------------------------------------------------------------------
# SMTP sink


@dataclass(frozen=True)
class SmtpMessage:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    auth_user: str | None
    tls: bool

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class SmtpSink(_Managed):
    """An aiosmtpd server in this process that keeps every message (:attr:`messages`).

    ``starttls``: offer STARTTLS with ``cert`` (or a fresh self-signed one, :attr:`ca_file`);
    ``require_starttls``: refuse MAIL before it. ``auth``: offer AUTH PLAIN/LOGIN for
    :attr:`username`/:attr:`password` (after STARTTLS when ``starttls``); ``require_auth``:
    refuse MAIL before it. A wrong password gets ``535``.
    """

    host = LOOPBACK

    def __init__(
        self,
        *,
        starttls: bool = False,
        require_starttls: bool = False,
        auth: bool = False,
        require_auth: bool = False,
        username: str = "guard",
        password: str = "smtp-test-password",
        cert: CertPair | None = None,
        start: bool = True,
    ) -> None:
        try:
            import aiosmtpd.controller  # noqa: F401
        except ImportError as exc:
            raise ServerError("aiosmtpd not installed: pip install aiosmtpd") from exc
        self.starttls = starttls or require_starttls
        self.require_starttls = require_starttls
        self.auth = auth or require_auth
        self.require_auth = require_auth
        self.username = username
        self.password = password
        self.port = 0
        self._messages: list[SmtpMessage] = []
        self._arrived = threading.Condition()
        self._controller: Any = None
        self._dir: Path | None = None
        self.cert: CertPair | None = None
        self.ca_file: Path | None = None
        self._register()
        try:
            if self.starttls:
                if cert is None:
                    self._dir = _make_dir("igsm-")
                    cert = make_cert(self._dir)
                self.cert = cert
                self.ca_file = cert.cert
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    @property
    def messages(self) -> list[SmtpMessage]:
        """A copy of what arrived so far, oldest first."""
        with self._arrived:
            return list(self._messages)

    def clear(self) -> None:
        with self._arrived:
            self._messages.clear()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[SmtpMessage]:
        """Wait until at least ``count`` messages arrived; return them all."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"SMTP sink got {len(self._messages)} of {count} messages in {timeout:g} s"
                )
            return list(self._messages)

    def _store(self, message: SmtpMessage) -> None:
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Start on a free port (on the same port when restarted)."""
        if self.running:
            return
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session

        sink = self

        class QuietSession(Session):
            # aiosmtpd 1.4 itself sets the deprecated ``login_data`` after every successful
            # AUTH, which warns each time; same attribute, no warning.
            @property
            def login_data(self) -> Any:
                return self._login_data

            @login_data.setter
            def login_data(self, value: Any) -> None:
                self._login_data = value

        class Server(SMTP):
            def _create_session(self) -> Session:
                return QuietSession(self.loop)

        class SinkController(Controller):
            def factory(self) -> SMTP:
                return Server(self.handler, **self.SMTP_kwargs)

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                data = envelope.original_content or envelope.content or b""
                user = session.auth_data if session.authenticated else None
                sink._store(
                    SmtpMessage(
                        mail_from=str(envelope.mail_from),
                        rcpt_tos=tuple(envelope.rcpt_tos),
                        data=bytes(data),
                        auth_user=str(user) if user is not None else None,
                        tls=session.ssl is not None,
                    )
                )
                return "250 OK"

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            if (
                isinstance(data, LoginPassword)
                and data.login == self.username.encode()
                and data.password == self.password.encode()
            ):
                return AuthResult(success=True, auth_data=self.username)
            return AuthResult(success=False, handled=False)  # aiosmtpd then answers 535

        options: dict[str, Any] = {}
        if self.cert is not None:
            options["tls_context"] = self.cert.server_context()
            options["require_starttls"] = self.require_starttls
        if self.auth:
            options["authenticator"] = authenticator
            options["auth_required"] = self.require_auth
            options["auth_require_tls"] = self.starttls
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            port = self.port or _free_ports(1)[0]
            if not self.port and not _can_listen(port) and attempt + 1 < attempts:
                continue  # aiosmtpd notices a taken port only after its whole ready_timeout
            controller = SinkController(
                Handler(), hostname=self.host, port=port, ready_timeout=5, **options
            )
            try:
                controller.start()
            except Exception as exc:
                if attempt + 1 == attempts:
                    raise ServerError(f"SMTP sink did not start on port {port}: {exc}") from exc
                continue
            self._controller = controller
            self.port = port
            return

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._unregister()

    def client_context(self) -> ssl.SSLContext:
        """A client SSL context trusting :attr:`ca_file` (for ``smtplib.SMTP.starttls``)."""
        if self.cert is None:
            raise ServerError("this SMTP sink has no TLS")
        return self.cert.client_context()
