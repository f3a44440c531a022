"""``CI`` is read in one place, one way (tests/plugins/__init__.py ``in_ci``): a missing
server or tool fails the run in CI and skips it elsewhere, the same for every one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.plugins import in_ci

TESTS = Path(__file__).resolve().parent
READS_CI = re.compile(r"""(environ(\.get)?\s*[\[(]|getenv\s*\()\s*["']CI["']""")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("True", True),
        ("yes", True),
        (" TRUE ", True),
        ("", False),
        ("0", False),
        ("false", False),
        ("no", False),
        ("anything", False),
    ],
)
def test_in_ci_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_in_ci_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert in_ci() is False


def test_ci_is_read_only_by_the_helper() -> None:
    helper = TESTS / "plugins" / "__init__.py"
    assert READS_CI.search(helper.read_text()), "the pattern no longer matches the helper's read"
    direct = [
        f"{path.relative_to(TESTS)}:{n}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != helper
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if READS_CI.search(line)
    ]
    assert direct == [], f"read CI with tests.plugins.in_ci(), not directly: {direct}"
