"""The dependency direction of the house layout, checked on the imports themselves.

cli -> app -> {api | transport} -> services -> store -> boot -> proto. Pure layers (proto, boot)
import no I/O machinery at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "netbootd"

# Which netbootd modules each layer may import. Every module of the package is in a layer: a
# new top-level module must be given its place here.
_BELOW_EDGES = {"proto", "boot", "store", "services", "config", "toml_lines", "logs"}
ALLOWED: dict[str, set[str]] = {
    "proto": {"proto"},
    "boot": {"proto", "boot"},
    "store": {"proto", "boot", "store"},
    "services": _BELOW_EDGES,
    "transport": {*_BELOW_EDGES, "transport"},
    "api": {*_BELOW_EDGES, "api"},
    "workers": {*_BELOW_EDGES, "workers"},
    "config": {"proto", "boot", "config", "toml_lines"},
    "toml_lines": set(),
    "logs": set(),
    # The composition root wires everything but the commands that drive it.
    "app": {*_BELOW_EDGES, "transport", "api", "workers", "app"},
    "explain": {*_BELOW_EDGES, "app", "explain"},
    "check": {*_BELOW_EDGES, "app", "explain", "check"},
    # The commands that read and change the state directory with no server.
    "state": {*_BELOW_EDGES, "state"},
    "cli": {
        *_BELOW_EDGES,
        *("transport", "api", "workers", "app", "explain", "check", "state", "cli", ""),
    },
    "__main__": {"cli"},
    "__init__": set(),
}
FORBIDDEN_IN_PURE = {"socket", "asyncio", "logging", "sqlite3", "aiohttp", "time", "os"}

# services/ and store/ decide and keep state; timers and threads belong to the edges. The few
# that must live there are named, with why.
TIMERS_AND_THREADS = {
    "threading",
    "_thread",
    "concurrent.futures",
    "multiprocessing",
    "call_later",
    "call_at",
    "run_in_executor",
    "to_thread",
    "sleep",
}
ALLOWED_TIMERS_AND_THREADS: dict[str, str] = {
    # Group commit: one writer thread takes the batches off the event loop, and a batch waits
    # up to BATCH_INTERVAL for the next one to join it.
    "store/leases.py": "threading call_later",
}


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


def _netbootd_imports(path: Path, text: str | None = None) -> set[str]:
    """The layers the module at ``path`` imports, relative imports resolved; "" the package."""
    found: set[str] = set()
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    source = path.read_text() if text is None else text
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "netbootd":
                found.add(parts[1] if len(parts) > 1 else "")
    return found


def test_every_module_has_a_layer() -> None:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 40
    assert [str(p.relative_to(SRC)) for p in modules if _layer(p) not in ALLOWED] == []


def test_layers_point_one_way() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        layer = _layer(path)
        for name in _netbootd_imports(path):
            if name not in ALLOWED[layer] and name != layer:
                problems.append(f"{path.relative_to(SRC)} imports netbootd.{name}")
    assert problems == []


def _timers_and_threads(text: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in TIMERS_AND_THREADS)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in TIMERS_AND_THREADS:
                found.add(node.module)
            found.update(a.name for a in node.names if a.name in TIMERS_AND_THREADS)
        elif isinstance(node, ast.Attribute) and node.attr in TIMERS_AND_THREADS:
            found.add(node.attr)
    return found


def test_no_timers_or_threads_in_services_and_store() -> None:
    problems = []
    for layer in ("services", "store"):
        for path in sorted((SRC / layer).rglob("*.py")):
            name = str(path.relative_to(SRC))
            allowed = set(ALLOWED_TIMERS_AND_THREADS.get(name, "").split())
            for found in sorted(_timers_and_threads(path.read_text()) - allowed):
                problems.append(f"{name} uses {found}")
    assert problems == []


def test_the_checks_see_what_they_look_for() -> None:
    """The scans find a timer, a thread and a relative import where they are written."""
    text = (
        "import threading\nfrom ..transport import dhcp\ndef f(loop):\n    loop.call_later(1, f)\n"
    )
    assert _timers_and_threads(text) == {"threading", "call_later"}
    assert _netbootd_imports(SRC / "services" / "probe.py", text) == {"transport"}


def test_pure_layers_do_no_io() -> None:
    problems = []
    for layer in ("proto", "boot"):
        for path in sorted((SRC / layer).rglob("*.py")):
            for name in _imports(path):
                if name.split(".")[0] in FORBIDDEN_IN_PURE:
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert problems == []
