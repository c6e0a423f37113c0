"""The server's dependencies in pyproject.toml are what src/ imports, and no more.

What only the demo and the benchmarks use is an extra (``demo``), so that an install of the
server does not pull it in; the server must then never import it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "netbootd"


def _project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert isinstance(project, dict)
    return project


def machine_names(requirements: object) -> set[str]:
    """The distribution names of requirement strings, as their import names."""
    assert isinstance(requirements, list)
    # A distribution's dashes are underscores in its import name (prometheus-client).
    return {
        re.split(r"[\s<>=!~;\[]", str(spec), maxsplit=1)[0].replace("-", "_")
        for spec in requirements
    }


def _third_party_imports() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            found.update(name.split(".")[0] for name in names)
    return found - set(sys.stdlib_module_names) - {"netbootd", "__future__"}


def test_src_imports_only_what_the_project_depends_on() -> None:
    assert _third_party_imports() == machine_names(_project()["dependencies"])


def test_rich_is_the_demos_alone() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    assert machine_names(extras["demo"]) == {"rich"}
    assert "rich" not in machine_names(_project()["dependencies"])
    assert "rich" not in _third_party_imports()
