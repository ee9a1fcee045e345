"""guard.reports' public names: each has one home in the package, is loaded on first use,
and ``from guard.reports import clean`` (the command line, at start) stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import guard.reports as reports


@pytest.mark.parametrize("name", reports.__all__)
def test_every_public_name_has_one_home(name: str) -> None:
    value = getattr(reports, name)
    homes = [
        module
        for module in reports._MODULES
        if name in getattr(__import__(f"guard.reports.{module}", fromlist=["_"]), "__all__", ())
    ]
    assert len(homes) == 1, f"{name} is exported by {homes}"
    assert getattr(sys.modules[f"guard.reports.{homes[0]}"], name) is value


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        reports.no_such_thing  # noqa: B018


def test_the_sanitiser_loads_without_the_store_or_the_templates() -> None:
    code = (
        "import sys; from guard.reports import clean, json_line; "
        "print(sorted(m for m in ('sqlalchemy', 'jinja2', 'zipfile', 'guard.store') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
