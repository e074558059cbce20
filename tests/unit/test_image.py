"""What the production image holds: the packages the roles and the application need,
never the development tools or the tests, and a command line that says so."""

from __future__ import annotations

import ast
import re

import pytest

from leadflow_app import cli
from tests.unit.test_layering import RANK, ROOT, _imported, _module_name

SHIPPED = {"leadflow", "schemas", "streams", "sinks", "ingest_adapters", "privacy", "leadflow_app"}


def _copied() -> set[str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    return {
        source.rstrip("/")
        for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.MULTILINE)
        for source in line.split()[:-1]
    }


def test_the_image_copies_every_runtime_package_and_no_tool() -> None:
    copied = _copied()
    assert copied >= SHIPPED
    assert "leadflow_tools" not in copied
    assert "tests" not in copied
    # every other package is shipped
    assert set(RANK) - SHIPPED == {"leadflow_tools", "tests"}


def test_nothing_shipped_imports_the_tools_or_the_tests() -> None:
    found = []
    for package in sorted(SHIPPED):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            module = _module_name(path)
            wrong = _imported(tree, module, path.name == "__init__.py") & {
                "leadflow_tools",
                "tests",
            }
            found += [(module, target) for target in sorted(wrong)]
    assert not found


@pytest.mark.parametrize("argv", [["up"], ["kafka", "status"], ["bench", "pipeline"]])
def test_without_the_tools_their_verbs_say_why_they_cannot_run(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "tools_installed", lambda: False)
    assert cli.main(argv) == 2
    assert "development tool" in capsys.readouterr().out
    # The verbs of the image itself are there as ever.
    assert cli.build_parser().parse_args(["worker"]).fn is cli.cmd_worker
