"""Finding the configuration file, reading it and validating it into a :class:`Config`.

The file is TOML, read with :mod:`tomllib`; every problem becomes one
:class:`ConfigError` naming the file and each dotted key (``config.toml: imap.port: must
be an integer``). Defaults that depend on the environment are decided from the ``env``
mapping handed in.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from guard.config.fields import LoadContext
from guard.config.models import Config
from guard.config.paths import CONFIG_ENV_VAR, config_candidates, expand_home
from guard.config.wording import ConfigError, describe


def find_config_path(
    explicit: Path | None,
    env: Mapping[str, str] = os.environ,
    *,
    system_path: Path | None = None,
) -> Path:
    """The configuration file to use: ``--config FILE``, else ``$INBOX_GUARD_CONFIG``, else
    ``$XDG_CONFIG_HOME/inbox-guard/config.toml``, else ``/etc/inbox-guard/config.toml``.

    A file named explicitly (option or variable) must exist; it never silently falls back.
    ``system_path`` replaces the ``/etc`` location (for tests).
    """
    if explicit is not None:
        return _existing_file(explicit, "--config")
    from_env = env.get(CONFIG_ENV_VAR, "")
    if from_env:
        return _existing_file(Path(expand_home(from_env, env)), f"${CONFIG_ENV_VAR}")
    candidates = config_candidates(env)
    if system_path is not None:
        candidates[-1] = system_path
    for candidate in candidates:
        if candidate.is_file():
            return candidate.absolute()
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise ConfigError(
        f"no configuration file found (tried {tried}); pass --config FILE or set ${CONFIG_ENV_VAR}"
    )


def _existing_file(path: Path, origin: str) -> Path:
    if path.is_file():
        return path.absolute()
    what = "is not a file" if path.exists() else "does not exist"
    raise ConfigError(f"{path}: configuration file (from {origin}) {what}")


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Find (see :func:`find_config_path`), read and validate the configuration."""
    path = find_config_path(path, env)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_toml_error(exc)}") from None
    return _validate(data, source=path, env=env)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    # Python 3.14 has exc.msg/lineno/colno; before that the position is only in the text,
    # as "Invalid value (at line 3, column 8)".
    lineno, colno = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    if isinstance(lineno, int) and isinstance(colno, int):
        return f"line {lineno}, column {colno}: invalid TOML: {getattr(exc, 'msg', exc)}"
    text = str(exc)
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", text, re.DOTALL)
    if match is None:
        return f"invalid TOML: {text}"
    return f"line {match.group(2)}, column {match.group(3)}: invalid TOML: {match.group(1)}"


def _validate(data: dict[str, Any], *, source: Path, env: Mapping[str, str]) -> Config:
    context = LoadContext(base_dir=source.parent, env=env)
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems = tuple(describe(error, Config) for error in exc.errors(include_input=True))
        raise ConfigError(f"{source}: " + "; ".join(problems), problems=problems) from None
    config._source = source
    return config
