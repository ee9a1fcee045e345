"""What every command shares: the Typer app, one-line errors and the exit codes, and
loading the configuration, rules and store with a clean error."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from guard import __version__
from guard.errors import GuardError, Kind
from guard.reports import clean

PROG = "inbox-guard"

# Usage errors raised by the parser: typer >= 0.2x vendors click and its exceptions derive
# from typer.TyperException; older typer uses click itself.
_USAGE_ERRORS: tuple[type[Exception], ...] = (typer.TyperException,)
try:  # pragma: no cover - depends on the installed typer
    import click

    _USAGE_ERRORS += (click.ClickException,)
except ImportError:  # pragma: no cover
    pass


class Format(StrEnum):
    text = "text"
    json = "json"


class Level(StrEnum):
    none = "none"
    low = "low"
    medium = "medium"
    high = "high"


app = typer.Typer(
    name=PROG,
    help="Guards a freelancer's work mailbox: off-platform requests, scams, phishing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Fail(GuardError):
    """A one-line error for the user; ends the command with ``code`` (2: input or usage)."""

    kind = Kind.USAGE

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- output safety


def indented(line: str) -> str:
    """:func:`clean` for one report line, keeping its indentation."""
    body = line.lstrip(" ")
    return " " * (len(line) - len(body)) + clean(body)


def error(message: str) -> None:
    """One line on stderr: ``inbox-guard: error: <message>``."""
    sys.stderr.write(f"{PROG}: error: {clean(message)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    raise Fail(message, code)


# --------------------------------------------------------------------------- shared helpers


def rules_or_fail(rules: Sequence[Path]) -> Any:
    from guard.policy import RulesError, load_rules

    try:
        return load_rules(list(rules))
    except RulesError as exc:
        message = str(exc)
        for path in map(str, rules):  # "x.toml: rule ..." -> "rules file 'x.toml': rule ..."
            if message.startswith(f"{path}: "):
                message = f"rules file '{path}': {message[len(path) + 2 :]}"
                break
        fail(message if "rules" in message else f"rules: {message}")
    except OSError as exc:  # the engine should wrap these; be safe anyway
        fail(f"rules file '{exc.filename}': {exc.strerror or exc}")


RISK_STYLE = {"none": "green", "low": "yellow", "medium": "dark_orange", "high": "bold red"}


# --------------------------------------------------------------------------- app callback


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Guards a freelancer's work mailbox: off-platform requests, scams, phishing."""


# --------------------------------------------------------------------------- scan


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Configuration file (default: $INBOX_GUARD_CONFIG, "
        "$XDG_CONFIG_HOME/inbox-guard/config.toml, /etc/inbox-guard/config.toml).",
    ),
]


def config_or_fail(path: Path | None) -> Any:
    from guard.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def store_or_fail(config: Any) -> Any:
    from guard.store import Store, StoreError

    try:
        return Store(config.store.url)
    except StoreError as exc:
        fail(str(exc), 1)


def quiet_libraries() -> None:
    import logging

    # mail-parser logs hostile header values at ERROR level; they are attacker text.
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)


def setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("imapclient").setLevel(logging.WARNING)
    quiet_libraries()


def parse_since(value: str | None) -> Any:
    from datetime import UTC, datetime, timedelta

    if value is None:
        return None
    m = re.fullmatch(r"(\d+)\s*([dhw])", value.strip())
    if m:
        n = int(m.group(1))
        delta = {"d": timedelta(days=n), "h": timedelta(hours=n), "w": timedelta(weeks=n)}
        return datetime.now(UTC).replace(tzinfo=None) - delta[m.group(2)]
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"--since: expected a date like 2026-11-01, a time, or 7d / 12h (got {value!r})")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed
