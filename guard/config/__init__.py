"""Settings: where the configuration file is, what it may say, and how secrets are fetched.

The file is TOML, read with :mod:`tomllib` and validated by frozen pydantic models that
refuse unknown keys. Every problem becomes a :class:`ConfigError` whose text is one line
naming the file and the dotted key (``config.toml: imap.port: must be an integer``).
Relative paths in the file are taken relative to the file's directory, and defaults that
depend on the environment (the SQLite location) are decided at load time from the ``env``
mapping handed in, so tests never need to touch the real environment. Secrets are never
stored in the file or in the models: the file says where a secret comes from (a command, a
file, or a systemd credential) and the ``password()`` / ``oauth2_token()`` methods fetch it
on demand as a :class:`Secret`, which never prints its value. Nothing here talks to a server
(turning ``[imap]`` into connection settings is ``guard.mailbox``'s). It must not import any
other part of guard except ``guard.errors`` and ``guard.locks``.

- ``models``: the sections and :class:`Config`;
- ``fields``: the checks of single values (paths, hosts, addresses, durations ...);
- ``load``: finding, reading and validating the file;
- ``paths``: the default locations (systemd, XDG);
- ``wording``: :class:`ConfigError` and the one-line wording of every problem;
- ``secrets``: :class:`Secret` and fetching secrets from commands, files, credentials.
"""

from guard.config.fields import MIN_POLL_INTERVAL, TlsMode
from guard.config.load import find_config_path, load_config
from guard.config.models import (
    Account,
    AccountSettings,
    Config,
    DigestSettings,
    DraftSettings,
    EvidenceSettings,
    ImapSettings,
    LabelMode,
    LabelSettings,
    PolicySettings,
    RiskLevel,
    ScheduleSettings,
    SmtpSettings,
    StoreSettings,
)
from guard.config.paths import (
    CONFIG_ENV_VAR,
    SYSTEM_CONFIG_PATH,
    config_candidates,
    default_state_dir,
)
from guard.config.secrets import SECRET_COMMAND_TIMEOUT, Secret, resolve_secret
from guard.config.wording import ConfigError

__all__ = [
    "CONFIG_ENV_VAR",
    "MIN_POLL_INTERVAL",
    "SECRET_COMMAND_TIMEOUT",
    "SYSTEM_CONFIG_PATH",
    "Account",
    "AccountSettings",
    "Config",
    "ConfigError",
    "DigestSettings",
    "DraftSettings",
    "EvidenceSettings",
    "ImapSettings",
    "LabelMode",
    "LabelSettings",
    "PolicySettings",
    "RiskLevel",
    "ScheduleSettings",
    "Secret",
    "SmtpSettings",
    "StoreSettings",
    "TlsMode",
    "config_candidates",
    "default_state_dir",
    "find_config_path",
    "load_config",
    "resolve_secret",
]
