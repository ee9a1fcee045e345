"""Configuration: loading, defaults, one-line errors, file lookup and secret resolution.

Secrets are resolved for real: files with real modes, commands run through /bin/sh, and a
credentials directory laid out as systemd's LoadCredential= does.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import pickle
import re
import time
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from guard.config import (
    CONFIG_ENV_VAR,
    Config,
    ConfigError,
    DigestSettings,
    ImapSettings,
    Secret,
    SmtpSettings,
    default_state_dir,
    find_config_path,
    load_config,
    resolve_secret,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "inbox-guard.example.toml"
MINIMAL = '[imap]\nhost = "imap.example.com"\nusername = "me@example.com"\n'
SECRET = "s3cr3t-Hunter2-value"
SMTP_AND_DIGEST = """
[smtp]
host = "smtp.example.com"
username = "me@example.com"
[digest]
to = "me@personal.example.org"
from = "inbox-guard <me@example.com>"
"""


def write_config(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: only HOME, pointing into the test's directory."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home)}


def load_text(tmp_path: Path, text: str, env: dict[str, str]) -> Config:
    return load_config(write_config(tmp_path, text), env)


def error_for(tmp_path: Path, text: str, env: dict[str, str]) -> str:
    """The one-line error for a config text, without the leading file name."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


# --- the example file -------------------------------------------------------------------


def test_example_file_loads(env: dict[str, str]) -> None:
    config = load_config(EXAMPLE, env)

    assert config.imap.host == "imap.example.com"
    assert config.imap.password_file == EXAMPLE.parent / "imap-password"
    assert config.smtp is None
    assert config.digest is None


def test_example_file_defaults_are_the_real_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    # Lines "#key = value" and "#[section]" document defaults: uncommented, nothing changes.
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^#(?=\[[a-z]+\]|[a-z_0-9]+ = )", "", text)
    assert uncommented != text

    # Both copies in one directory, so relative paths resolve alike.
    active = load_config(write_config(tmp_path, text, "active.toml"), env)
    everything = load_text(tmp_path, uncommented, env)

    for section in ("imap", "labels", "store", "policy", "schedule"):
        assert getattr(everything, section) == getattr(active, section), section
    assert everything.smtp is not None and everything.digest is not None
    smtp_defaults = SmtpSettings(host=everything.smtp.host, username=everything.smtp.username)
    assert everything.smtp == smtp_defaults
    assert everything.digest.time == dt.time(8, 0)
    assert everything.digest.send_empty is False


# --- defaults ---------------------------------------------------------------------------


def test_minimal_config_gets_every_default(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL, env)

    imap = config.imap
    assert (imap.port, imap.tls, imap.timeout) == (993, "implicit", 30.0)
    assert imap.folders is None
    assert (imap.batch_size, imap.max_message_bytes) == (200, 25 * 1024 * 1024)
    assert imap.password_file is None and imap.password_command is None
    assert imap.oauth2_token_command is None and imap.ca_file is None
    assert not imap.uses_oauth2
    assert (config.labels.mode, config.labels.prefix) == ("auto", "Guard")
    assert (config.policy.rules, config.policy.min_risk) == ((), "medium")
    assert (config.schedule.poll_interval, config.schedule.idle) == (300, False)
    assert config.smtp is None and config.digest is None
    state = Path(env["HOME"]) / ".local/state/inbox-guard"
    assert config.store_url == f"sqlite:///{state}/inbox-guard.sqlite3"
    assert config.sqlite_path == state / "inbox-guard.sqlite3"
    assert config.source == tmp_path / "config.toml"


@pytest.mark.parametrize(
    ("section", "tls", "port"),
    [
        ("imap", "implicit", 993),
        ("imap", "starttls", 143),
        ("imap", "none", 143),
        ("smtp", "starttls", 587),
        ("smtp", "implicit", 465),
        ("smtp", "none", 25),
    ],
)
def test_port_defaults_follow_the_tls_mode(
    tmp_path: Path, env: dict[str, str], section: str, tls: str, port: int
) -> None:
    text = f"""
[imap]
host = "localhost"
username = "me"
{'tls = "' + tls + '"' if section == "imap" else ""}
[smtp]
host = "localhost"
{'tls = "' + tls + '"' if section == "smtp" else ""}
"""
    config = load_text(tmp_path, text, env)

    assert getattr(config, section).port == port


def test_explicit_port_wins(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL + 'tls = "starttls"\nport = 1143\n', env)

    assert config.imap.port == 1143


def test_smtp_and_digest_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL + SMTP_AND_DIGEST, env)

    assert config.smtp is not None and config.digest is not None
    assert (config.smtp.port, config.smtp.tls, config.smtp.timeout) == (587, "starttls", 30.0)
    assert config.digest.to == "me@personal.example.org"
    assert config.digest.from_addr == "inbox-guard <me@example.com>"
    assert config.digest.time == dt.time(8, 0)
    assert config.digest.timezone is None
    assert config.digest.send_empty is False
    assert config.digest.zone() is not None


def test_digest_time_and_zone(tmp_path: Path, env: dict[str, str]) -> None:
    text = MINIMAL + SMTP_AND_DIGEST + 'time = "7:05"\ntimezone = "Europe/Berlin"\n'
    config = load_text(tmp_path, text, env)

    assert config.digest is not None
    assert config.digest.time == dt.time(7, 5)
    assert config.digest.zone() == ZoneInfo("Europe/Berlin")


def test_digest_time_may_be_a_toml_local_time(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL + SMTP_AND_DIGEST + "time = 21:30:00\n", env)

    assert config.digest is not None and config.digest.time == dt.time(21, 30)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("45", 45),
        ("30", 30),
        ('"120"', 120),
        ('"30s"', 30),
        ('"5m"', 300),
        ('"1h"', 3600),
        ('"1h30m"', 5400),
        ('"2m30s"', 150),
    ],
)
def test_poll_interval_accepts_seconds_and_durations(
    tmp_path: Path, env: dict[str, str], value: str, seconds: int
) -> None:
    config = load_text(tmp_path, MINIMAL + f"[schedule]\npoll_interval = {value}\n", env)

    assert config.schedule.poll_interval == seconds


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1"])
def test_tls_none_is_allowed_for_loopback_hosts(
    tmp_path: Path, env: dict[str, str], host: str
) -> None:
    text = f'[imap]\nhost = "{host}"\nusername = "me"\ntls = "none"\n'

    assert load_text(tmp_path, text, env).imap.tls == "none"


def test_folders_rules_and_labels(tmp_path: Path, env: dict[str, str]) -> None:
    text = (
        MINIMAL
        + 'folders = ["INBOX", "Archive/2026"]\n'
        + (
            '[labels]\nmode = "keywords"\nprefix = "Inbox Guard"\n'
            '[policy]\nrules = ["rules/extra.toml", "/etc/inbox-guard/site.toml"]\n'
            'min_risk = "high"\n'
        )
    )
    config = load_text(tmp_path, text, env)

    assert config.imap.folders == ("INBOX", "Archive/2026")
    assert (config.labels.mode, config.labels.prefix) == ("keywords", "Inbox Guard")
    assert config.policy.rules == (
        tmp_path / "rules/extra.toml",
        Path("/etc/inbox-guard/site.toml"),
    )
    assert config.policy.min_risk == "high"


def test_relative_paths_are_taken_from_the_config_directory(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    text = MINIMAL + (
        'password_file = "secrets/imap"\nca_file = "~/ca.pem"\n'
        '[store]\nurl = "sqlite:///data/guard.sqlite3"\n'
    )
    config = load_config(write_config(config_dir, text), env)

    assert config.imap.password_file == config_dir / "secrets/imap"
    assert config.imap.ca_file == Path(env["HOME"]) / "ca.pem"
    assert config.sqlite_path == config_dir / "data/guard.sqlite3"


@pytest.mark.parametrize(
    ("url", "sqlite_path"),
    [
        ("sqlite:////var/lib/inbox-guard/db.sqlite3", Path("/var/lib/inbox-guard/db.sqlite3")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://guard@/inbox_guard", None),
    ],
)
def test_sqlite_path_only_for_sqlite_files(
    tmp_path: Path, env: dict[str, str], url: str, sqlite_path: Path | None
) -> None:
    config = load_text(tmp_path, MINIMAL + f'[store]\nurl = "{url}"\n', env)

    assert config.store_url == url
    assert config.sqlite_path == sqlite_path


def test_models_are_frozen(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL, env)

    with pytest.raises(ValidationError):
        config.imap.port = 1
    assert hash(config) == hash(load_text(tmp_path, MINIMAL, env))


def test_sections_can_be_built_in_code() -> None:
    imap = ImapSettings(host="127.0.0.1", tls="none", port=10143, username="u")
    digest = DigestSettings(to="a@example.org", from_addr="b@example.org")

    assert (imap.port, imap.tls) == (10143, "none")
    assert digest.from_addr == "b@example.org"
    assert Config(imap=imap).store.url.startswith("sqlite:///")


# --- errors -----------------------------------------------------------------------------

ERRORS = [
    pytest.param(MINIMAL + 'port = "993"\n', "imap.port: must be an integer", id="wrong-type"),
    pytest.param(MINIMAL + "timeout = true\n", "imap.timeout: must be a number", id="bool-number"),
    pytest.param(
        MINIMAL + "[schedule]\nidle = 1\n", "schedule.idle: must be true or false", id="bool"
    ),
    pytest.param(
        MINIMAL + 'hostt = "x"\n',
        'unknown key "imap.hostt" (did you mean "imap.host"?)',
        id="unknown-key",
    ),
    pytest.param(
        MINIMAL + "[imap.extra]\nx = 1\n", 'unknown key "imap.extra"', id="unknown-subtable"
    ),
    pytest.param(
        MINIMAL + "[sheduel]\nidle = true\n",
        "unknown section [sheduel] (did you mean [schedule]?)",
        id="unknown-section",
    ),
    pytest.param(
        MINIMAL + 'tls = "ssl"\n',
        'imap.tls: must be one of "implicit", "starttls", "none"',
        id="bad-enum",
    ),
    pytest.param(
        '[imap]\nhost = "example.com"\nusername = "me"\ntls = "none"\n',
        'imap.tls: "none" is only allowed for a loopback host (got example.com)',
        id="tls-none-remote",
    ),
    pytest.param(
        MINIMAL + 'password_file = "pw"\npassword_command = "pass show x"\n',
        "imap: set only one of password_file, password_command or oauth2_token_command "
        "(found password_file and password_command)",
        id="two-secret-sources",
    ),
    pytest.param(
        MINIMAL + SMTP_AND_DIGEST + 'time = "25:00"\n',
        'digest.time: must be a time of day as "HH:MM" (24-hour clock), like "08:00"',
        id="bad-time",
    ),
    pytest.param(
        MINIMAL + SMTP_AND_DIGEST + 'timezone = "Europe/Atlantis"\n',
        'digest.timezone: unknown time zone "Europe/Atlantis" '
        '(use an IANA name like "Europe/Berlin")',
        id="bad-timezone",
    ),
    pytest.param(
        MINIMAL + SMTP_AND_DIGEST.replace("me@personal.example.org", "not an address"),
        'digest.to: must be one email address, like "me@example.org"',
        id="bad-address",
    ),
    pytest.param(
        MINIMAL + '[digest]\nto = "a@example.org"\nfrom = "b@example.org"\n',
        "digest: needs an [smtp] section to send the digest through",
        id="digest-without-smtp",
    ),
    pytest.param(
        MINIMAL + "[schedule]\npoll_interval = 1\n",
        "schedule.poll_interval: must be at least 2 seconds (got 1)",
        id="poll-too-often",
    ),
    pytest.param(
        MINIMAL + '[schedule]\npoll_interval = "5 minutes"\n',
        'schedule.poll_interval: must be a number of seconds or a duration like "30s", "5m", "1h"',
        id="bad-duration",
    ),
    pytest.param(
        MINIMAL + "batch_size = 0\n", "imap.batch_size: must be at least 1", id="too-small"
    ),
    pytest.param(
        MINIMAL + "batch_size = 10000\n", "imap.batch_size: must be at most 5000", id="too-big"
    ),
    pytest.param(
        MINIMAL + "folders = []\n",
        "imap.folders: must name at least one folder (leave it out for the default)",
        id="no-folders",
    ),
    pytest.param(
        MINIMAL + 'folders = ["INBOX", 3]\n', "imap.folders[1]: must be a string", id="list-item"
    ),
    pytest.param(
        MINIMAL + '[labels]\nprefix = ""\n',
        "labels.prefix: must be a non-empty string without control characters",
        id="empty-prefix",
    ),
    pytest.param(
        MINIMAL + '[labels]\nmode = "stars"\n',
        'labels.mode: must be one of "auto", "gmail", "keywords", "folders"',
        id="bad-label-mode",
    ),
    pytest.param(
        MINIMAL + '[policy]\nmin_risk = "none"\n',
        'policy.min_risk: must be one of "low", "medium", "high"',
        id="bad-min-risk",
    ),
    pytest.param('[imap]\nusername = "me"\n', "imap.host: is required", id="missing-key"),
    pytest.param(
        "[labels]\n", "missing section [imap] (or [[account]] blocks)", id="missing-section"
    ),
    pytest.param('imap = "imap.example.com"\n', "imap: must be a table", id="not-a-table"),
    pytest.param(
        '[imap]\nhost = "imaps://imap.example.com"\nusername = "me"\n',
        "imap.host: must be a host name, not a URL",
        id="host-is-url",
    ),
    pytest.param(
        '[imap]\nhost = "imap.example.com:993"\nusername = "me"\n',
        "imap.host: must be a host name only; put the port number in port",
        id="host-with-port",
    ),
    pytest.param(
        MINIMAL + '[smtp]\nhost = "smtp.example.com"\npassword_file = "pw"\n',
        "smtp.username: is required when password_file is set",
        id="smtp-password-without-user",
    ),
    pytest.param(
        MINIMAL + '[store]\nurl = "no url at all"\n',
        'store.url: must be an SQLAlchemy URL like "sqlite:////var/lib/inbox-guard/db.sqlite3"',
        id="bad-url",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_each_problem_is_one_line_naming_the_key(
    tmp_path: Path, env: dict[str, str], text: str, expected: str
) -> None:
    assert error_for(tmp_path, text, env) == expected


def test_several_problems_share_the_line(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path, MINIMAL + 'port = "x"\ntls = "ssl"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, env)

    assert caught.value.problems == (
        "imap.port: must be an integer",
        'imap.tls: must be one of "implicit", "starttls", "none"',
    )
    assert str(caught.value) == f"{path}: " + "; ".join(caught.value.problems)


def test_toml_syntax_error_names_the_line(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_for(tmp_path, MINIMAL + "port = \n", env)

    assert message.startswith("line 4, column 8: invalid TOML: ")


def test_unreadable_file_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[imap]\nhost = "\xff"\n')

    with pytest.raises(ConfigError, match=r": not valid UTF-8 text$"):
        load_config(path, env)


def test_values_are_never_echoed_in_errors(tmp_path: Path, env: dict[str, str]) -> None:
    # Someone pastes a password where it does not belong, or into a URL that is not one.
    text = MINIMAL + f'password = "{SECRET}"\n[store]\nurl = "{SECRET} oops"\n'
    message = error_for(tmp_path, text, env)

    assert SECRET not in message
    assert 'unknown key "imap.password" (did you mean "imap.password_file"?)' in message


# --- finding the file ---------------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, env: dict[str, str]) -> dict[str, Path]:
    """One config file for each place it can be found; the system one is a temp file."""
    result = {}
    for name in ("explicit", "from_env", "xdg", "system"):
        directory = tmp_path / name
        directory.mkdir()
        result[name] = write_config(directory, MINIMAL)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-home")
    xdg = tmp_path / "xdg-home" / "inbox-guard"
    xdg.mkdir(parents=True)
    result["xdg"].rename(xdg / "config.toml")
    result["xdg"] = xdg / "config.toml"
    env[CONFIG_ENV_VAR] = str(result["from_env"])
    return result


def test_lookup_prefers_the_explicit_file(places: dict[str, Path], env: dict[str, str]) -> None:
    found = find_config_path(places["explicit"], env, system_path=places["system"])

    assert found == places["explicit"]


def test_lookup_then_the_environment_variable(places: dict[str, Path], env: dict[str, str]) -> None:
    assert find_config_path(None, env, system_path=places["system"]) == places["from_env"]


def test_lookup_then_xdg_config_home(places: dict[str, Path], env: dict[str, str]) -> None:
    del env[CONFIG_ENV_VAR]

    assert find_config_path(None, env, system_path=places["system"]) == places["xdg"]


def test_lookup_then_the_system_file(places: dict[str, Path], env: dict[str, str]) -> None:
    del env[CONFIG_ENV_VAR]
    places["xdg"].unlink()

    assert find_config_path(None, env, system_path=places["system"]) == places["system"]


def test_xdg_config_home_defaults_to_dot_config(tmp_path: Path, env: dict[str, str]) -> None:
    user = Path(env["HOME"]) / ".config" / "inbox-guard"
    user.mkdir(parents=True)
    expected = write_config(user, MINIMAL)

    assert find_config_path(None, env, system_path=tmp_path / "none.toml") == expected
    env["XDG_CONFIG_HOME"] = "relative/dir"  # the XDG spec says to ignore relative values
    assert find_config_path(None, env, system_path=tmp_path / "none.toml") == expected


def test_no_file_found_lists_the_candidates(tmp_path: Path, env: dict[str, str]) -> None:
    system = tmp_path / "etc" / "config.toml"

    with pytest.raises(ConfigError) as caught:
        find_config_path(None, env, system_path=system)

    user = Path(env["HOME"]) / ".config/inbox-guard/config.toml"
    assert str(caught.value) == (
        f"no configuration file found (tried {user}, {system}); "
        f"pass --config FILE or set ${CONFIG_ENV_VAR}"
    )


def test_named_files_must_exist(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing\.toml: .*\(from --config\) does not exist"):
        find_config_path(missing, env)

    env[CONFIG_ENV_VAR] = str(missing)
    with pytest.raises(ConfigError, match=r"\(from \$INBOX_GUARD_CONFIG\) does not exist"):
        load_config(None, env)


def test_load_config_uses_the_lookup(places: dict[str, Path], env: dict[str, str]) -> None:
    assert load_config(None, env).source == places["from_env"]


# --- state directory ----------------------------------------------------------------------


def test_state_directory_from_systemd_takes_the_first_entry(env: dict[str, str]) -> None:
    env["STATE_DIRECTORY"] = "/var/lib/inbox-guard:/var/lib/other"
    env["XDG_STATE_HOME"] = "/ignored"

    assert default_state_dir(env) == Path("/var/lib/inbox-guard")


def test_state_directory_from_xdg_then_home(env: dict[str, str]) -> None:
    assert default_state_dir(env) == Path(env["HOME"]) / ".local/state/inbox-guard"
    env["XDG_STATE_HOME"] = "/srv/state"
    assert default_state_dir(env) == Path("/srv/state/inbox-guard")


def test_default_store_url_follows_state_directory(tmp_path: Path, env: dict[str, str]) -> None:
    env["STATE_DIRECTORY"] = "/var/lib/inbox-guard"
    config = load_text(tmp_path, MINIMAL, env)

    assert config.store_url == "sqlite:////var/lib/inbox-guard/inbox-guard.sqlite3"
    assert config.sqlite_path == Path("/var/lib/inbox-guard/inbox-guard.sqlite3")


# --- secrets ------------------------------------------------------------------------------


def secret_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def imap_with(tmp_path: Path, env: dict[str, str], extra: str) -> ImapSettings:
    return load_text(tmp_path, MINIMAL + extra, env).imap


def test_password_from_file_is_its_first_line(tmp_path: Path, env: dict[str, str]) -> None:
    secret_file(tmp_path / "imap-password", f"  {SECRET}  \nsecond line\n")
    imap = imap_with(tmp_path, env, 'password_file = "imap-password"\n')

    assert imap.password(env).reveal() == SECRET


def test_group_readable_password_file_is_accepted(tmp_path: Path, env: dict[str, str]) -> None:
    secret_file(tmp_path / "pw", SECRET, 0o640)

    assert imap_with(tmp_path, env, 'password_file = "pw"\n').password(env).reveal() == SECRET


def test_world_readable_password_file_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = secret_file(tmp_path / "pw", SECRET, 0o644)
    imap = imap_with(tmp_path, env, 'password_file = "pw"\n')

    with pytest.raises(ConfigError) as caught:
        imap.password(env)

    assert str(caught.value) == (
        f"imap.password_file: {path} is readable by every user (mode 0644); "
        f"refusing to use it; run: chmod o-rwx {path}"
    )


def test_missing_password_file(tmp_path: Path, env: dict[str, str]) -> None:
    imap = imap_with(tmp_path, env, 'password_file = "nope"\n')

    with pytest.raises(ConfigError, match=r"^imap\.password_file: cannot read .*nope: No such"):
        imap.password(env)


def test_password_from_command_is_its_first_line(tmp_path: Path, env: dict[str, str]) -> None:
    command = f"printf '%s\\\\nsecond\\\\n' '{SECRET}'"
    imap = imap_with(tmp_path, env, f'password_command = "{command}"\n')

    assert imap.password(env).reveal() == SECRET


def test_command_gets_no_stdin_and_the_given_environment(env: dict[str, str]) -> None:
    env["PATH"] = "/usr/bin:/bin"
    env["GUARD_TEST_VALUE"] = "from-env"
    command = 'if read line; then echo "had input"; else echo "$GUARD_TEST_VALUE"; fi'

    secret = resolve_secret(
        "imap.password", file=None, command=command, credential="imap-password", env=env
    )

    assert secret.reveal() == "from-env"


def test_failing_command_never_shows_its_output(
    tmp_path: Path, env: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    command = f"echo {SECRET}; echo {SECRET} >&2; exit 1"
    imap = imap_with(tmp_path, env, f'password_command = "{command}"\n')

    with pytest.raises(ConfigError) as caught:
        imap.password(env)

    assert str(caught.value) == "imap.password_command: exited with status 1"
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert SECRET not in repr(caught.value)
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err  # its stderr is discarded


def test_missing_command_says_so(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^smtp\.password_command: exited with status 127"):
        resolve_secret(
            "smtp.password",
            file=None,
            command="/nonexistent/helper",
            credential="smtp-password",
            env=env,
        )


def test_slow_command_is_killed(env: dict[str, str]) -> None:
    started = time.monotonic()

    with pytest.raises(ConfigError, match=r"^imap\.password_command: did not finish within 0\.5"):
        resolve_secret(
            "imap.password",
            file=None,
            command="sleep 30; echo late",
            credential="imap-password",
            env=env,
            timeout=0.5,
        )

    assert time.monotonic() - started < 10


def test_empty_secrets_are_errors(tmp_path: Path, env: dict[str, str]) -> None:
    secret_file(tmp_path / "pw", "\n\n")
    with pytest.raises(ConfigError, match=r"^imap\.password_file: the secret is empty$"):
        imap_with(tmp_path, env, 'password_file = "pw"\n').password(env)
    with pytest.raises(ConfigError, match=r"^imap\.password_command: the secret is empty$"):
        imap_with(tmp_path, env, 'password_command = "true"\n').password(env)


def test_systemd_credentials_directory(tmp_path: Path, env: dict[str, str]) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials / "imap-password", SECRET + "\n", 0o400)
    secret_file(credentials / "smtp-password", "smtp-" + SECRET, 0o400)
    secret_file(credentials / "imap-oauth2-token", "token-" + SECRET, 0o400)
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    config = load_text(tmp_path, MINIMAL + SMTP_AND_DIGEST, env)

    assert config.smtp is not None
    assert config.imap.password(env).reveal() == SECRET
    assert config.smtp.password(env).reveal() == "smtp-" + SECRET
    assert config.imap.oauth2_token(env).reveal() == "token-" + SECRET


def test_configured_source_wins_over_credentials(tmp_path: Path, env: dict[str, str]) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials / "imap-password", "from-credentials")
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    secret_file(tmp_path / "pw", "from-file")

    from_file = imap_with(tmp_path, env, 'password_file = "pw"\n')
    from_command = imap_with(tmp_path, env, 'password_command = "echo from-command"\n')

    assert from_file.password(env).reveal() == "from-file"
    assert from_command.password(env).reveal() == "from-command"


def test_oauth2_token_from_command(tmp_path: Path, env: dict[str, str]) -> None:
    imap = imap_with(tmp_path, env, 'oauth2_token_command = "echo ya29.token"\n')

    assert imap.uses_oauth2
    assert imap.oauth2_token(env).reveal() == "ya29.token"


def test_no_secret_source_says_which_keys_could_provide_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    imap = imap_with(tmp_path, env, "")

    with pytest.raises(ConfigError) as caught:
        imap.password(env)

    assert str(caught.value) == (
        "imap.password: not configured; set imap.password_file or imap.password_command, "
        'or provide the systemd credential "imap-password"'
    )
    env["CREDENTIALS_DIRECTORY"] = str(tmp_path)
    with pytest.raises(ConfigError, match=r"\(not in \$CREDENTIALS_DIRECTORY\)$"):
        imap.oauth2_token(env)


# --- never showing secrets ----------------------------------------------------------------


def test_secret_hides_its_value() -> None:
    secret = Secret(SECRET)

    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret} {secret!r} {[secret]}".count(SECRET) == 0
    assert secret.reveal() == SECRET
    assert secret == Secret(SECRET) and secret != Secret("other")
    assert copy.deepcopy(secret) is secret
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_database_password_is_masked_outside_the_url(tmp_path: Path, env: dict[str, str]) -> None:
    url = f"postgresql+psycopg://guard:{SECRET}@db.example.org/inbox_guard"
    config = load_text(tmp_path, MINIMAL + f'[store]\nurl = "{url}"\n', env)

    assert config.store_url == url
    assert SECRET not in repr(config) and SECRET not in str(config)
    assert SECRET not in json.dumps(config.redacted())
    assert config.redacted()["store"]["url"] == (
        "postgresql+psycopg://guard:***@db.example.org/inbox_guard"
    )


def test_resolved_secrets_never_reach_the_config(tmp_path: Path, env: dict[str, str]) -> None:
    secret_file(tmp_path / "pw", SECRET)
    config = load_text(tmp_path, MINIMAL + 'password_file = "pw"\n', env)

    assert config.imap.password(env).reveal() == SECRET
    assert SECRET not in repr(config) + str(config) + json.dumps(config.redacted())


def test_redacted_is_plain_data_keyed_like_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL + SMTP_AND_DIGEST + 'time = "06:45"\n', env)

    shown = config.redacted()

    assert shown["digest"]["from"] == "inbox-guard <me@example.com>"
    assert shown["digest"]["time"] == "06:45"
    assert shown["imap"]["port"] == 993
    assert set(shown) == {
        "imap",
        "labels",
        "store",
        "policy",
        "smtp",
        "digest",
        "schedule",
        "evidence",
        "drafts",
    }
    # It reads back as a valid configuration once the None values are dropped.
    lines = []
    for section, values in shown.items():
        lines.append(f"[{section}]")
        lines += [
            f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None
        ]
    reloaded = load_text(tmp_path, "\n".join(lines) + "\n", env)
    assert reloaded == config
    assert tomllib.loads("\n".join(lines))  # stays TOML


def test_systemd_configuration_directory_is_looked_at_first(tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc-unit"
    unit_dir.mkdir()
    (unit_dir / "config.toml").write_text("")
    env = {"CONFIGURATION_DIRECTORY": str(unit_dir), "XDG_CONFIG_HOME": str(tmp_path / "x")}
    assert find_config_path(None, env) == (unit_dir / "config.toml").absolute()


def test_no_home_at_all_does_not_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise KeyError("no passwd entry")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert str(default_state_dir({})).startswith("/nonexistent")


ACCOUNTS = """
[[account]]
name = "upwork"
digest_to = "a@personal.example"
[account.imap]
host = "imap.one.example"
username = "me@one.example"
password_file = "secrets/one"

[[account]]
name = "fiverr"
[account.imap]
host = "imap.two.example"
username = "me@two.example"
[account.labels]
prefix = "Safety"
"""


def test_several_accounts(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, ACCOUNTS, env)
    names = [a.name for a in config.accounts]
    assert names == ["upwork", "fiverr"]
    upwork, fiverr = config.accounts
    assert upwork.imap.password_file == tmp_path / "secrets" / "one"  # relative to the file
    assert upwork.digest_to == "a@personal.example" and fiverr.digest_to is None
    assert upwork.labels.prefix == "Guard" and fiverr.labels.prefix == "Safety"
    assert config.account_named("fiverr").imap.host == "imap.two.example"
    with pytest.raises(ConfigError, match="no account named 'x'"):
        config.account_named("x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + ACCOUNTS, "use either [imap] for one mailbox or [[account]] blocks"),
        (ACCOUNTS + ACCOUNTS, "account names must be unique (repeated: fiverr, upwork)"),
        ('[[account]]\nname = "bad name"\n[account.imap]\nhost = "h"\nusername = "u"\n', "name"),
    ],
)
def test_account_errors(tmp_path: Path, env: dict[str, str], text: str, message: str) -> None:
    assert message in error_for(tmp_path, text, env)
