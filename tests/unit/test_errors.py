"""One error hierarchy: every error the guard raises is a GuardError with a kind, and the
retry policy is decided from the kind alone."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import guard
from guard.errors import GuardError, Kind, kind_of, retry_delay


def _guard_exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(guard.__path__, "guard."):
        if info.name == "guard.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseException)
                and obj.__module__ == info.name
                and obj is not GuardError
            ):
                found.append(obj)
    return found


def test_every_error_class_of_the_guard_is_a_guard_error() -> None:
    classes = _guard_exception_classes()
    assert len(classes) >= 10  # the walk really found the modules' errors
    stray = [f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, GuardError)]
    assert not stray, f"not in the hierarchy: {stray}"


def test_each_module_error_says_what_kind_it_is() -> None:
    from guard.config import ConfigError
    from guard.mail.sources import SourceError
    from guard.mailbox.imap import ImapError
    from guard.policy import RulesError
    from guard.store import StoreError

    assert ConfigError("config.toml: imap.port: must be an integer").kind is Kind.CONFIG
    assert RulesError("rules.toml: bad").kind is Kind.RULES
    assert StoreError("disk full").kind is Kind.STORE
    assert SourceError("/x.eml", "no such file").kind is Kind.INPUT
    err = ImapError("login", "the server refused the login")
    assert err.kind is Kind.LOGIN and err.kind == "login"
    assert str(err) == "the server refused the login"
    # still what callers caught before
    assert isinstance(SourceError("/x", "gone"), OSError)
    assert isinstance(RulesError("x"), ValueError)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        GuardError("x", kind="no-such-kind")


def test_kind_of_anything_raised() -> None:
    assert kind_of(GuardError("x", kind=Kind.TLS)) is Kind.TLS
    assert kind_of(TimeoutError()) is Kind.TIMEOUT
    assert kind_of(ConnectionResetError()) is Kind.NETWORK


def test_a_refused_login_or_a_broken_config_is_retried_slowly() -> None:
    delays = [retry_delay(Kind.LOGIN, n) for n in range(1, 7)]
    assert delays == [300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0]
    assert retry_delay(Kind.CONFIG, 1) == retry_delay(Kind.LOGIN, 1)
    # a poll interval longer than the ladder's top is the ceiling instead
    assert retry_delay("login", 10, ceiling=7200.0) == 7200.0


def test_network_failures_are_retried_fast_and_never_later_than_the_schedule() -> None:
    assert [retry_delay(Kind.NETWORK, n) for n in range(1, 5)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(Kind.STORE, 20) == 300.0
    assert retry_delay(Kind.TIMEOUT, 20, ceiling=60.0) == 60.0
    assert retry_delay(Kind.DNS, 0) == 5.0  # no failure yet counts as the first
