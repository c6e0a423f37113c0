"""The dependency direction of the house layout, checked on the imports themselves.

cli -> app -> {api | transport} -> services -> store -> boot -> proto. Pure layers (proto, boot)
import no I/O machinery at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "netbootd"

# Which netbootd modules each layer may import.
ALLOWED: dict[str, set[str]] = {
    "proto": {"proto"},
    "boot": {"proto", "boot"},
    "store": {"proto", "boot", "store"},
    "services": {"proto", "boot", "store", "services", "config", "logfmt", "loglines"},
    "transport": {
        "proto",
        "boot",
        "store",
        "services",
        "transport",
        "config",
        "logfmt",
        "loglines",
    },
    "api": {"proto", "boot", "store", "services", "api", "config", "logfmt", "loglines"},
    "config": {"proto", "boot", "config"},
    "logfmt": {"logfmt"},
    "logsetup": {"logsetup", "loglines"},
    "loglines": {"loglines"},
}
FORBIDDEN_IN_PURE = {"socket", "asyncio", "logging", "sqlite3", "aiohttp", "time", "os"}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_layers_point_one_way() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        layer = _layer(path)
        if layer not in ALLOWED:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "netbootd" and len(parts) > 1 and parts[1] not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert problems == []


def test_pure_layers_do_no_io() -> None:
    problems = []
    for layer in ("proto", "boot"):
        for path in sorted((SRC / layer).rglob("*.py")):
            for name in _imports(path):
                if name.split(".")[0] in FORBIDDEN_IN_PURE:
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert problems == []
