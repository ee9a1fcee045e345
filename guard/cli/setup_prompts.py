"""The asking half of ``inbox-guard setup``: each question is answered by its option,
else (interactive) typed by the user, else its default; a question without an answer ends
a ``--non-interactive`` setup with one line naming the option. Text that came from a
server or a file is shown through :func:`clean`, never as rich markup."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.prompt import Confirm, IntPrompt, Prompt
from rich.text import Text

from guard.cli import setup_steps as steps
from guard.cli.common import fail
from guard.config import Secret
from guard.reports import clean

_ADDRESS = re.compile(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+")
_TIME = re.compile(r"([01]?\d|2[0-3]):[0-5]\d")
TLS_MODES = ["implicit", "starttls", "none"]
LABEL_MODES = ["auto", "gmail", "keywords", "folders"]


class Prompter:
    """Questions and answers, and what every step shares: the staged file, the checks'
    lines, a failed step."""

    def __init__(self, options: dict[str, Any], *, interactive: bool) -> None:
        self.o = options
        self.interactive = interactive
        self.console = Console(highlight=False, soft_wrap=True)
        self.raw: dict[str, Any] = {}
        self.account: str | None = None
        self.plan: steps.Plan
        self.target: Path
        self.staging: steps.Staging | None = None

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(Text(clean(text, multiline=True), style=style or ""))

    def ask(
        self,
        label: str,
        option: str,
        default: str | None = None,
        *,
        choices: list[str] | None = None,
        check: Callable[[str], str | None] | None = None,
        allow_empty: bool = False,
    ) -> str:
        """The option's value, else (interactive) the answer typed, else the default; a
        missing value without a default ends a non-interactive setup."""
        flag = "--" + option.replace("_", "-")
        given = self.o.get(option)
        if given is not None:
            value = str(given)
            problem = self._problem(value, choices, check, allow_empty)
            if problem:
                fail(f"{flag}: {problem}")
            return value
        if not self.interactive:
            if default is None and not allow_empty:
                fail(f"missing value: {flag} ({label})")
            return default or ""
        while True:
            value = Prompt.ask(
                label,
                console=self.console,
                default=default or "",
                show_default=bool(default),
                choices=choices,
            ).strip()
            problem = self._problem(value, choices, check, allow_empty)
            if not problem:
                return value
            self.say(problem, "red")

    @staticmethod
    def _problem(
        value: str,
        choices: list[str] | None,
        check: Callable[[str], str | None] | None,
        allow_empty: bool,
    ) -> str | None:
        if not value:
            return None if allow_empty else "a value is needed"
        if choices and value not in choices:
            return f"must be one of {', '.join(choices)}"
        return check(value) if check else None

    def ask_port(self, label: str, option: str, default: int) -> int:
        given = self.o.get(option)
        if given is not None or not self.interactive:
            port = int(given) if given is not None else default
            if not 1 <= port <= 65535:
                fail(f"--{option.replace('_', '-')}: must be a port number, 1-65535")
            return port
        while True:
            port = IntPrompt.ask(label, console=self.console, default=default)
            if 1 <= port <= 65535:
                return port
            self.say("a port number is 1-65535", "red")

    def _own_words(self, exc: Exception) -> str:
        """A configuration error about the staged file, naming the file being set up."""
        text = str(exc)
        if self.staging is not None and self.staging.config is not None:
            text = text.replace(str(self.staging.config), str(self.target))
        return text

    def confirm(self, label: str, default: bool) -> bool:
        if not self.interactive:
            return default
        return bool(Confirm.ask(label, console=self.console, default=default))

    def secret(self, label: str, option: str, *, keep: bool = False) -> Secret | None:
        """A password: copied from the option's file, else typed without echo, else (no
        terminal) the first line of standard input. None: keep the current one."""
        path = self.o.get(option)
        if path is not None:
            return _secret_from(Path(path), "--" + option.replace("_", "-"))
        if not self.interactive:
            if keep:
                return None  # the current one; --password-file /dev/stdin gives a new one
            if sys.stdin.isatty():
                fail(f"missing value: --{option.replace('_', '-')} (or the password on stdin)")
            line = sys.stdin.readline().strip()
            if not line:
                fail("the password read from standard input is empty")
            return Secret(line)
        suffix = " (Enter keeps the current one)" if keep else " (not shown)"
        while True:
            typed = Prompt.ask(label + suffix, console=self.console, password=True).strip()
            if typed:
                return Secret(typed)
            if keep:
                return None
            self.say("a password is needed", "red")

    def _stage(self) -> Any:
        assert self.staging is not None
        return self.staging.write(self.raw, self.plan)

    def _forget(self, *names: str) -> None:
        """Options whose values failed: from now on, their step is asked."""
        for name in names:
            self.o[name] = None

    def _show(self, check: Any) -> None:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[check.ok]
        style = {True: "green", False: "red", None: "yellow"}[check.ok]
        self.say(f"{mark} {check.name}: {check.detail}", style)
        if check.ok is False and check.hint:
            self.say(f"     hint: {check.hint}")

    def _failed(self, name: str, detail: str, hint: str, *, code: int) -> None:
        if not self.interactive:
            fail(
                f"live check failed: {name}: {detail}" + (f" (hint: {hint})" if hint else ""), code
            )
        if name == "config":
            self.say(detail, "red")
        self.say("Let's fix that step and check again (Ctrl-C stops; nothing is written).")


# ------------------------------------------------------------------------------ checks


def _check_address(value: str) -> str | None:
    return None if _ADDRESS.fullmatch(value) else "must be an email address like me@example.org"


def _check_host(value: str) -> str | None:
    if "://" in value or " " in value or value.count(":") == 1:
        return "a host name only (no scheme, no port)"
    return None


def _check_time(value: str) -> str | None:
    return None if _TIME.fullmatch(value) else "must be HH:MM on a 24-hour clock"


def _check_file(value: str) -> str | None:
    return None if Path(value).expanduser().is_file() else f"no such file: {value}"


def _check_folders(value: str, listed: Iterable[str]) -> str | None:
    names = [f.strip() for f in value.split(",") if f.strip()]
    known = set(listed)
    missing = [n for n in names if known and n not in known]
    if not names:
        return "name at least one folder"
    return f"not on the server: {', '.join(missing)}" if missing else None


def _address_default(raw: dict[str, Any], old: dict[str, Any]) -> str | None:
    for value in (old.get("username"), raw.get("digest", {}).get("from")):
        if isinstance(value, str) and _ADDRESS.fullmatch(value.strip()):
            return value.strip()
        if isinstance(value, str):
            found = re.search(r"<([^<>]+)>", value)
            if found and _ADDRESS.fullmatch(found.group(1)):
                return found.group(1)
    return None


def _secret_from(path: Path, flag: str) -> Secret:
    try:
        with path.expanduser().open("rb") as handle:
            line = handle.read(64 * 1024).split(b"\n", 1)[0].decode("utf-8").strip()
    except OSError as exc:
        fail(f"{flag}: cannot read {path}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        fail(f"{flag}: {path} is not UTF-8 text")
    if not line:
        fail(f"{flag}: {path} is empty")
    return Secret(line)


def _one_line(exc: BaseException) -> str:
    stderr = getattr(exc, "stderr", None)
    text = stderr if isinstance(stderr, str) and stderr.strip() else str(exc)
    return " ".join(text.split())[:200]
