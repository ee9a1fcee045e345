"""The systemd units in ``systemd/``, checked with the real ``systemd-analyze``.

``systemd-analyze verify`` parses a unit the way the service manager would and
``systemd-analyze security --offline=yes`` scores its sandbox; both work on a plain unit file.
The tests run them on a copy of each unit whose ``ExecStart=`` names this virtualenv's
``inbox-guard`` console script, because ``verify`` refuses a unit whose program does not exist
and ``/usr/local/bin/inbox-guard`` (the installed path) is not there on a development machine.

``systemd-analyze`` comes with Debian's ``systemd`` package. When it is missing the tests fail
(never skip), so a machine that cannot check the units cannot pass them either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"
SYSTEM_UNIT = "inbox-guard.service"
USER_UNIT = "inbox-guard-user.service"
MAX_SYSTEM_EXPOSURE = 2.0
EXPOSURE = re.compile(r"Overall exposure level for (?P<unit>\S+): (?P<score>\d+(?:\.\d+)?)")

# What the user unit leaves out of the system unit's [Service] settings, and why: a user
# manager cannot apply these (systemd.exec(5) marks them "only available for system
# services"), or, for PrivateIPC=, applying it makes ExecReload= fail with 226/NAMESPACE.
NOT_IN_USER_UNIT = {
    "DynamicUser",
    "ProtectProc",
    "ProcSubset",
    "ProtectControlGroups",
    "RemoveIPC",
    "DevicePolicy",
    "PrivateIPC",
}
# And what only the user unit has: its own session keyring (the default there is to inherit
# the login session's) and SetCredential= fallbacks, because a user manager on systemd 252
# has no credential store to search, so a missing credential file would be fatal.
ONLY_IN_USER_UNIT = {"KeyringMode", "SetCredential"}


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze not found: install the Debian package 'systemd' "
            "(tests/support/install-test-servers should)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def console_script() -> Path:
    script = Path(sys.executable).parent / "inbox-guard"
    if not script.is_file():
        pytest.fail(f"{script} not found: install the project (pip install -e .)", pytrace=False)
    return script


def unit_text(name: str) -> str:
    return (UNIT_DIR / name).read_text(encoding="utf-8")


def runnable_copy(name: str, directory: Path, script: Path) -> Path:
    """The unit under its own name in ``directory``, with ExecStart= running ``script``."""
    text, count = re.subn(
        r"^ExecStart=\S+", lambda _: f"ExecStart={script}", unit_text(name), flags=re.M
    )
    assert count == 1, f"{name}: expected exactly one ExecStart= line, found {count}"
    copy = directory / name
    copy.write_text(text, encoding="utf-8")
    return copy


def analyze(tool: str, *args: str, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "SYSTEMD_COLORS": "0",
        "SYSTEMD_PAGER": "",
        # `--user` needs a runtime directory even offline ("Failed to lookup RuntimeDirectory").
        "XDG_RUNTIME_DIR": str(runtime_dir),
    }
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def lines_about(unit: Path, result: subprocess.CompletedProcess[str]) -> list[str]:
    """Output lines that concern ``unit``: verify prefixes its findings with the unit's file
    path ("/tmp/.../inbox-guard.service:12: Unknown key ...") or its name ("inbox-guard.service:
    Command ... is not executable"). Other lines are about units it loaded on the way (targets
    and their dependencies on this host) and are not ours to fix."""
    return [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]


def service_section(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line of the [Service] section, continuations joined."""
    lines: list[tuple[int, str]] = []
    section = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if pending is not None:
            pending = (pending[0], pending[1][:-1] + raw.strip())
            if not pending[1].endswith("\\"):
                lines.append(pending)
                pending = None
            continue
        stripped = raw.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped
            continue
        if section != "[Service]":
            continue
        if stripped.endswith("\\") and not stripped.startswith(("#", ";")):
            pending = (number, stripped)
            continue
        lines.append((number, stripped))
    return lines


def is_comment(line: str) -> bool:
    return line.startswith(("#", ";"))


def directives(text: str) -> set[str]:
    return {
        line.split("=", 1)[0]
        for _, line in service_section(text)
        if line and not is_comment(line) and "=" in line
    }


def assert_verifies(tool: str, unit: Path, *scope: str) -> None:
    """``systemd-analyze [scope] verify unit`` passes and says nothing about the unit."""
    result = analyze(tool, *scope, "verify", str(unit), runtime_dir=unit.parent)
    assert lines_about(unit, result) == []
    assert result.returncode == 0, result.stdout + result.stderr


def test_system_unit_passes_systemd_analyze_verify(
    systemd_analyze: str, console_script: Path, tmp_path: Path
) -> None:
    assert_verifies(systemd_analyze, runnable_copy(SYSTEM_UNIT, tmp_path, console_script))


def test_user_unit_passes_systemd_analyze_verify_in_user_scope(
    systemd_analyze: str, console_script: Path, tmp_path: Path
) -> None:
    unit = runnable_copy(USER_UNIT, tmp_path, console_script)
    assert_verifies(systemd_analyze, unit, "--user")


def test_verify_output_filter_catches_a_misspelled_directive(
    systemd_analyze: str, console_script: Path, tmp_path: Path
) -> None:
    # verify exits 0 on unknown keys and bad values; only its output tells. Make sure the
    # filter above really sees such lines on this systemd version.
    unit = runnable_copy(SYSTEM_UNIT, tmp_path, console_script)
    unit.write_text(
        unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strcit\nProtectSytem=1")
    )
    result = analyze(systemd_analyze, "verify", str(unit), runtime_dir=tmp_path)
    found = "\n".join(lines_about(unit, result))
    assert "strcit" in found
    assert "ProtectSytem" in found


def test_system_unit_exposure_is_at_most_2(
    systemd_analyze: str, console_script: Path, tmp_path: Path
) -> None:
    unit = runnable_copy(SYSTEM_UNIT, tmp_path, console_script)
    result = analyze(systemd_analyze, "security", "--offline=yes", str(unit), runtime_dir=tmp_path)
    match = EXPOSURE.search(result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match["score"])
    print(f"{SYSTEM_UNIT}: overall exposure {score}")
    assert score <= MAX_SYSTEM_EXPOSURE, result.stdout


def test_user_unit_exposure_is_reported(
    systemd_analyze: str, console_script: Path, tmp_path: Path
) -> None:
    # No threshold: offline, `security` scores the file as a system unit even with --user. It
    # counts "runs as root" (a user unit has no User=) and misses settings a user manager
    # cannot apply (ProtectProc=, ...), so the number says little about the real sandbox.
    unit = runnable_copy(USER_UNIT, tmp_path, console_script)
    result = analyze(
        systemd_analyze, "--user", "security", "--offline=yes", str(unit), runtime_dir=tmp_path
    )
    match = EXPOSURE.search(result.stdout)
    assert match, result.stdout + result.stderr
    print(f"{USER_UNIT}: overall exposure {match['score']} (offline, scored as a system unit)")


@pytest.mark.parametrize("name", [SYSTEM_UNIT, USER_UNIT])
def test_every_service_directive_has_a_comment_line_above_it(name: str) -> None:
    # systemd has no end-of-line comments ("Key=value # why" makes "# why" part of the
    # value), so the one-line reason for each setting has to sit on the line above it.
    lines = service_section(unit_text(name))
    uncommented = [
        f"{name}:{number}: {line}"
        for index, (number, line) in enumerate(lines)
        if line and not is_comment(line) and (index == 0 or not is_comment(lines[index - 1][1]))
    ]
    assert uncommented == []
    trailing = [
        f"{name}:{number}: {line}"
        for number, line in lines
        if line and not is_comment(line) and re.search(r"\s[#;]", line)
    ]
    assert trailing == [], "systemd would read these comments as part of the value"


def test_user_unit_keeps_the_system_sandbox_minus_what_a_user_manager_cannot_do() -> None:
    system = directives(unit_text(SYSTEM_UNIT))
    user = directives(unit_text(USER_UNIT))
    assert system - user == NOT_IN_USER_UNIT
    assert user - system == ONLY_IN_USER_UNIT


def test_units_load_the_credentials_the_daemon_looks_for() -> None:
    # guard/config.py reads $CREDENTIALS_DIRECTORY/<name> for these names.
    from guard.config import ImapSettings, SmtpSettings

    names = {cls.PASSWORD_CREDENTIAL for cls in (ImapSettings, SmtpSettings)} | {
        cls.OAUTH2_CREDENTIAL for cls in (ImapSettings, SmtpSettings)
    }
    for unit in (SYSTEM_UNIT, USER_UNIT):
        loaded = {
            line.split("=", 1)[1].split(":", 1)[0]
            for _, line in service_section(unit_text(unit))
            if line.startswith("LoadCredential=")
        }
        assert loaded == names, unit


def test_the_units_are_installed_with_the_program(tmp_path: Path) -> None:
    """``inbox-guard setup`` installs the user unit from the installed program: a wheel
    (what ``pip install`` or ``pipx install`` puts in place) must carry both units, the
    same bytes as ``systemd/`` shows."""
    import zipfile

    # built from a copy: an in-tree build would leave build/ behind in the checkout
    source = tmp_path / "source"
    shutil.copytree(
        UNIT_DIR.parent,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"),
    )
    # with this virtualenv's setuptools (``make install`` brings it up to date): no download
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("inbox_guard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for unit in (SYSTEM_UNIT, USER_UNIT):
            assert zf.read(f"guard/service/units/{unit}") == (UNIT_DIR / unit).read_bytes()
