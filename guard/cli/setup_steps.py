"""The parts of ``inbox-guard setup`` that do not talk to the user: staging a candidate
configuration for the live check and the dry run, writing the secret and the
configuration for good, the dry run itself, and the systemd units (the answers and the
TOML file they become are ``setup_config``'s).

Nothing is written where the user will find it until :func:`commit`: before that, the
candidate configuration is a hidden 0600 file beside the target (so that relative paths in
an existing file mean what they meant) pointing at a secret and an SQLite store in a
private temporary directory, all removed when setup ends, however it ends. ``commit``
writes every new file under a temporary name first, then renames them into place with
Ctrl-C held back, so an interrupted setup leaves either the old files or the new ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.cli.setup_config import (
    SECRET_KEYS,
    Plan,
    ServerAnswers,
    build_doc,
    noted_address,
    old_imap,
    read_raw,
    render_toml,
)
from guard.config import Config, Secret, load_config
from guard.mailbox import Connection

__all__ = [  # the answers and the file, for the rest of setup
    "SECRET_KEYS",
    "Plan",
    "ServerAnswers",
    "Staging",
    "build_doc",
    "commit",
    "dry_run",
    "install_user_unit",
    "noted_address",
    "old_imap",
    "read_raw",
    "render_toml",
    "system_unit_commands",
]

# ------------------------------------------------------------------------------ staging


def _write_private(path: Path, data: bytes) -> None:
    """``data`` in a new file ``path`` created 0600 (never existing before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """A candidate configuration and its secrets, for the live check and the dry run;
    everything it made is removed by :meth:`close`."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.made_dirs: list[Path] = []
        missing = []
        for parent in [target.parent, *target.parent.parents]:
            if parent.exists():
                break
            missing.append(parent)
        self.tmp = Path(tempfile.mkdtemp(prefix="inbox-guard-setup-"))
        for directory in reversed(missing):
            directory.mkdir(mode=0o700)
            self.made_dirs.append(directory)
        self.config: Path | None = None

    def secret(self, name: str, secret: Secret) -> Path:
        path = self.tmp / name
        path.unlink(missing_ok=True)
        _write_private(path, secret.reveal().encode("utf-8") + b"\n")
        return path

    def write(self, raw: dict[str, Any], plan: Plan) -> Config:
        """Stage ``plan`` and load it as the daemon would (a ConfigError on a bad value)."""
        imap_secret = self.secret(plan.secret_name, plan.imap.secret) if plan.imap.secret else None
        smtp_secret = None
        if plan.smtp is not None and plan.smtp_own_secret and plan.smtp.secret is not None:
            smtp_secret = self.secret(plan.smtp_secret_name, plan.smtp.secret)
        staged = dataclasses.replace(plan, secret_store="file")
        doc = build_doc(raw, staged, imap_secret, smtp_secret)
        doc["store"] = {"url": f"sqlite:///{self.tmp / 'preview.sqlite3'}"}
        if self.config is None:
            fd, name = tempfile.mkstemp(
                prefix=f".{self.target.name}.setup-", dir=self.target.parent
            )
            os.close(fd)
            self.config = Path(name)
        self.config.write_text(render_toml(doc, address=plan.address), encoding="utf-8")
        return load_config(self.config, os.environ)

    def close(self, *, keep_dirs: bool = False) -> None:
        if self.config is not None:
            self.config.unlink(missing_ok=True)
            self.config = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        if not keep_dirs:
            for directory in reversed(self.made_dirs):
                with contextlib.suppress(OSError):
                    directory.rmdir()


# ------------------------------------------------------------------------------ commit


def credential_dir(config_path: Path, env: dict[str, str] | os._Environ[str]) -> Path:
    """Where the unit loads credentials from: /etc/credstore for a system configuration,
    else ``$XDG_CONFIG_HOME/credstore`` (the user unit's ``%E/credstore``)."""
    if str(config_path).startswith("/etc/"):
        return Path("/etc/credstore")
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "credstore"


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[list[bool]]:
    """Ctrl-C waits until the block is done (then raises KeyboardInterrupt)."""
    pressed: list[bool] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    except ValueError:  # not the main thread: nothing to hold back
        yield pressed
        return
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def secret_targets(plan: Plan, env: Any = os.environ) -> tuple[Path | None, Path | None]:
    """Where the IMAP and (own) SMTP secrets go; None where nothing new is written."""
    base = (
        credential_dir(plan.config_path, env)
        if plan.secret_store == "credential"
        else plan.config_path.parent
    )
    imap = base / plan.secret_name if plan.imap.secret is not None else None
    smtp = None
    if plan.smtp is not None and plan.smtp_own_secret and plan.smtp.secret is not None:
        smtp = base / plan.smtp_secret_name
    elif plan.smtp is not None and plan.secret_store == "credential" and imap is not None:
        smtp = base / plan.smtp_secret_name  # the daemon asks for "smtp-password" by name
    return imap, smtp


@dataclass
class Written:
    config: Path
    backup: Path | None
    secrets: list[Path]


def commit(raw: dict[str, Any], plan: Plan, env: Any = os.environ) -> Written:
    """Write the secrets and the configuration for good: each to a temporary name first,
    then renamed into place, the old configuration kept as ``<name>.bak-<time>``."""
    imap_path, smtp_path = secret_targets(plan, env)
    doc = build_doc(raw, plan, imap_path, smtp_path if plan.smtp_own_secret else None)
    text = render_toml(doc, address=plan.address)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(final: Path, data: bytes, mode: int) -> None:
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.new-", dir=final.parent)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        staged.append((Path(name), final))

    backup = None
    with ctrl_c_held():
        try:
            if imap_path is not None and plan.imap.secret is not None:
                stage(imap_path, plan.imap.secret.reveal().encode() + b"\n", 0o600)
            if smtp_path is not None:
                secret = plan.smtp.secret if plan.smtp and plan.smtp_own_secret else None
                secret = secret or plan.imap.secret
                assert secret is not None
                stage(smtp_path, secret.reveal().encode() + b"\n", 0o600)
            config_mode = 0o644 if str(plan.config_path).startswith("/etc/") else 0o600
            stage(plan.config_path, text.encode("utf-8"), config_mode)
            if plan.config_path.exists():
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                backup = plan.config_path.with_name(f"{plan.config_path.name}.bak-{stamp}")
                shutil.copy2(plan.config_path, backup)
            for temporary, final in staged:
                os.replace(temporary, final)
        except BaseException:
            for temporary, _final in staged:
                temporary.unlink(missing_ok=True)
            raise
    return Written(plan.config_path, backup, [final for _t, final in staged[:-1]])


# ------------------------------------------------------------------------------ dry run


class RecentConnection(Connection):
    """A :class:`Connection` whose new messages are only those that arrived since a date
    (``UID SEARCH UID n:* SINCE date``): the dry run of setup looks at the last days only."""

    since: dt.date = dt.date.today()

    def uids_after(self, last_uid: int) -> list[int]:
        assert self.client is not None
        found = self._call(
            "UID SEARCH",
            self.client.search,
            ["UID", f"{last_uid + 1}:*", "SINCE", self.since],
        )
        return sorted(int(u) for u in found if int(u) > last_uid)


def dry_run(config: Config, account: str, days: int = 7) -> Any:
    """``scan --dry-run`` of ``account`` over the messages of the last ``days`` days,
    against the staged (empty, throwaway) store; returns the scan summary."""
    from guard.cli.common import rules_or_fail
    from guard.service.scan import ScanSettings, scan
    from guard.store import Store

    since = dt.date.today() - dt.timedelta(days=days)

    def connect(settings: Any) -> Connection:
        conn = RecentConnection(settings)
        conn.since = since
        return conn

    store = Store(config.store.url)
    try:
        rules = rules_or_fail(list(config.policy.rules))
        return scan(
            ScanSettings.from_config(config, account), store, rules, dry_run=True, connect=connect
        )
    finally:
        store.close()


# ------------------------------------------------------------------------------ systemd


def unit_source(name: str) -> Path | None:
    """The unit file shipped with the program (``guard/service/units``, which the source
    tree's ``systemd/`` links to), if there is one."""
    import guard

    path = Path(guard.__file__).resolve().parent / "service" / "units" / name
    return path if path.is_file() else None


def _unit_quoted(text: str) -> str:
    """``text`` as one quoted word of a unit file (``%`` is systemd's specifier sign)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def install_user_unit(config_path: Path, env: Any = os.environ) -> list[str]:
    """Copy the user unit into ``~/.config/systemd/user/`` and enable it; a drop-in points
    ExecStart at this program when it is not ``~/.local/bin/inbox-guard``, and the daemon
    at ``config_path`` when it is not the user's default file. Returns the lines to show;
    raises OSError / CalledProcessError with what failed."""
    source = unit_source("inbox-guard-user.service")
    if source is None:
        raise FileNotFoundError(
            "systemd/inbox-guard-user.service is not installed with the program"
        )
    home = Path(env.get("HOME") or Path.home())
    base = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    unit_dir = base / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    target = unit_dir / "inbox-guard.service"
    shutil.copyfile(source, target)
    lines = [f"installed {target}"]
    settings = []
    program = shutil.which("inbox-guard", path=env.get("PATH"))
    if program and Path(program).resolve() != (home / ".local/bin/inbox-guard").resolve():
        settings += ["ExecStart=", f"ExecStart={_unit_quoted(program)} run"]
    if config_path != base / "inbox-guard" / "config.toml":
        settings.append("Environment=" + _unit_quoted(f"INBOX_GUARD_CONFIG={config_path}"))
    if settings:
        drop_in = unit_dir / "inbox-guard.service.d" / "setup.conf"
        drop_in.parent.mkdir(exist_ok=True)
        drop_in.write_text(
            "# Written by inbox-guard setup: where the program and its configuration are.\n"
            + "[Service]\n"
            + "".join(f"{line}\n" for line in settings),
            encoding="utf-8",
        )
        lines.append(f"wrote {drop_in}")
    for args in (("daemon-reload",), ("enable", "--now", "inbox-guard")):
        command = ["systemctl", "--user", *args]
        subprocess.run(command, check=True, capture_output=True, text=True, env=dict(env))
        lines.append("ran " + " ".join(command))
    return lines


def system_unit_commands(plan: Plan) -> list[str]:
    """The exact commands that run the guard as a system service. The system unit reads
    /etc/inbox-guard/config.toml and its secrets as credentials from /etc/credstore, so a
    configuration written elsewhere (or with a password file) is written again there."""
    source = unit_source("inbox-guard.service")
    unit = str(source) if source else "systemd/inbox-guard.service"
    commands = []
    system_ready = (
        plan.config_path == Path("/etc/inbox-guard/config.toml")
        and plan.secret_store == "credential"
    )
    if not system_ready:
        commands.append(
            "sudo inbox-guard setup --config /etc/inbox-guard/config.toml --secret-store credential"
        )
    commands += [
        f"sudo install -m 0644 {unit} /etc/systemd/system/",
        "sudo systemctl daemon-reload",
        "sudo systemctl enable --now inbox-guard",
    ]
    return commands
