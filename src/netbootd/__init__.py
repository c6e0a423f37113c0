"""netbootd: a network-boot server (DHCPv4, proxyDHCP, TFTP, HTTP) for PXE, UEFI and iPXE."""

from pathlib import Path

__version__ = "0.1.0"


def _check_compiled(package: Path) -> None:
    """In a source checkout, refuse a compiled module (see setup.py) older than its source:
    Python would import it, and run the code as it was before the edit, without a word."""
    if not (package.parent.name == "src" and (package.parent.parent / "setup.py").exists()):
        return  # an installed copy: built from its sources in one go
    for compiled in package.rglob("*.so"):
        source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            raise ImportError(
                f"{compiled} is older than {source.name}: rebuild it with `make venv` "
                "(pip install -e .), or delete the .so files to run the Python source"
            )


_check_compiled(Path(__file__).parent)
