"""Where the configuration and the state are when nothing says otherwise.

The locations follow systemd (``$CONFIGURATION_DIRECTORY``, ``$STATE_DIRECTORY``) and
the XDG base directories, decided from the ``env`` mapping handed in (never the process
environment behind the caller's back), so tests need not touch the real environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CONFIG_ENV_VAR = "INBOX_GUARD_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/inbox-guard/config.toml")
SQLITE_FILE_NAME = "inbox-guard.sqlite3"


def expand_home(text: str, env: Mapping[str, str]) -> str:
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME")
        if not home:
            try:  # a systemd DynamicUser has no HOME and may have no passwd entry either
                home = str(Path.home())
            except (KeyError, RuntimeError):
                home = "/nonexistent"
        return home + text[1:]
    return text


def _xdg_dir(env: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = env.get(variable, "")
    if value and Path(value).is_absolute():  # the XDG spec says to ignore relative values
        return Path(value)
    return Path(expand_home("~/" + fallback, env))


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where state lives: systemd's ``$STATE_DIRECTORY`` (its first entry when it lists
    several, colon-separated), else ``$XDG_STATE_HOME/inbox-guard``
    (``~/.local/state/inbox-guard`` by default)."""
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    if first:
        return Path(first)
    return _xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "inbox-guard"


def config_candidates(env: Mapping[str, str] = os.environ) -> list[Path]:
    """The files looked at, in order, when neither ``--config`` nor the variable is given:
    systemd's ``$CONFIGURATION_DIRECTORY`` (under a unit with ConfigurationDirectory=),
    the user's XDG directory, then ``/etc/inbox-guard``."""
    user = _xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "inbox-guard" / "config.toml"
    unit = env.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    return [*([Path(unit) / "config.toml"] if unit else []), user, SYSTEM_CONFIG_PATH]
