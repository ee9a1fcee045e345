"""The package layering of ``guard`` (see each package's docstring): a lower layer never
imports a higher one, so that, for example, the policy engine can be run and tested
without a mailbox, a store or a network. The rules are read from the source with ``ast``,
imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import guard

ROOT = Path(guard.__file__).parent

# What each top-level part of ``guard`` may import from ``guard`` (besides itself).
BASE = {"errors", "locks"}  # used by every layer
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "locks": {"errors"},
    "config": BASE,
    "mail": BASE,
    "policy": BASE | {"mail"},
    "store": BASE,
    "mailbox": BASE | {"config", "mail", "policy", "store"},
    "evaluation": BASE | {"mail", "policy"},
    "reports": BASE | {"config", "mail", "policy", "store", "mailbox"},
    "service": BASE | {"config", "mail", "policy", "store", "mailbox", "reports"},
    "cli": BASE
    | {"config", "mail", "policy", "store", "mailbox", "reports", "service", "evaluation"},
    "__main__": {"cli"},
}


def _part(module: str) -> str | None:
    """The top-level part of ``guard`` that ``module`` ('guard.x.y') belongs to."""
    pieces = module.split(".")
    if pieces[0] != "guard":
        return None
    return pieces[1] if len(pieces) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "guard":
                # "from guard import __version__" names guard itself, not a part of it.
                found.extend(
                    (node.lineno, "guard" if a.name.startswith("__") else f"guard.{a.name}")
                    for a in node.names
                )
            else:
                found.append((node.lineno, node.module))
    return found


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


def test_every_part_of_guard_has_a_layer_rule() -> None:
    parts = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in _sources()}
    assert parts <= set(ALLOWED), f"no layer rule for {sorted(parts - set(ALLOWED))}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    allowed = ALLOWED[own] | {own, ""}  # "": guard itself (its __version__)
    wrong = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if (part := _part(module)) is not None and part not in allowed
    ]
    assert not wrong, f"{path.relative_to(ROOT)} imports above its layer: {wrong}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from guard.service import scan\n    import guard.store\n")
    assert [m for _, m in _imports(bad)] == ["guard.service", "guard.store"]
