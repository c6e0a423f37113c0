"""``netbootd check``: every mistake a configuration and an inventory hold, found before a boot.

It takes serve's options, and goes through what serve does before it binds anything (the
config, the interface, the root, the inventory and its templates, the boot files, the subnets),
keeping every problem rather than stopping at the first. Then it looks at what serve lets pass
but a machine would stop at: a profile's kernel or initrd the root does not hold, the built-in
boot files missing. Nothing is bound, sent or written.

Each problem is one line, ``FILE:LINE: KEY: message`` where a file says it (a flag's problem
names the flag); warnings say ``warning:`` before the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netbootd.app import App
from netbootd.boot.inventory import InventoryError, InventoryProblem
from netbootd.config import Config
from netbootd.explain import STAND_IN_SERVER
from netbootd.services.inventory_files import load_inventory
from netbootd.services.machines import missing_boot_files


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: ``error`` stops a start or a boot; a warning serves, maybe not as meant."""

    text: str
    error: bool = True


@dataclass(frozen=True, slots=True)
class Report:
    findings: tuple[Finding, ...]
    summary: str

    @property
    def errors(self) -> int:
        return _errors(self.findings)

    def text(self) -> str:
        lines = [finding.text for finding in self.findings]
        return "\n".join([*lines, self.summary]) + "\n"


def inventory_line(directory: Path, problem: InventoryProblem, *, error: bool = True) -> Finding:
    """An inventory problem with its file named from the inventory directory."""
    location = problem.location
    where = f"{directory / location.file}:{location.line}" if location else str(directory)
    key = f"{problem.key}: " if problem.key else ""
    return Finding(f"{where}: {key}{'' if error else 'warning: '}{problem.message}", error)


def check(config: Config) -> Report:
    """The report on ``config``, built as explain builds it (without what only serving needs,
    which is among the problems found)."""
    findings = [Finding(missing) for missing in config.missing_for_serving()]
    if config.next_server is None:
        # What the scripts name does not matter here (and a missing interface is reported
        # once): the inventory loads as it would.
        config = config.model_copy(update={"next_server": STAND_IN_SERVER})
    app = App(config)
    for problem in app.prepare_all():
        cause = problem.__cause__
        if isinstance(cause, InventoryError) and config.inventory is not None:
            findings += (inventory_line(config.inventory, found) for found in cause.problems)
        else:
            findings.append(Finding(str(problem)))
    for boot_class, path, hint in app.missing_defaults:
        where = app.tree.root / path if app.tree is not None else Path(path)
        message = f"{boot_class} clients get this file by default, and it is missing ({hint})"
        findings.append(Finding(f"{where}: warning: {message}", error=False))
    if config.inventory is not None:
        findings += _inventory_findings(app, config.inventory)
    return Report(tuple(findings), _summary(config, app, findings))


def _inventory_findings(app: App, directory: Path) -> list[Finding]:
    """The kernels and initrds the root does not hold, and the inventory's warnings."""
    if app.inventory is not None:
        missing = app.inventory.missing  # looked for as it loaded
        warnings = app.inventory.machines.setup.warnings
    elif app.tree is not None:
        try:  # its templates failed, say: its files still name kernels
            missing, warnings = (
                missing_boot_files(load_inventory(directory), directory, app.tree),
                (),
            )
        except InventoryError:
            return []  # what is wrong was reported
    else:
        return []
    findings = [inventory_line(directory, problem) for problem in missing]
    findings += [inventory_line(directory, problem, error=False) for problem in warnings]
    return findings


def _summary(config: Config, app: App, findings: Sequence[Finding]) -> str:
    parts = [f"dhcp {config.dhcp_mode}"]
    if config.root is not None:
        parts.append(f"root {config.root}")
    if app.inventory is not None:
        inventory = app.inventory.machines.setup.inventory
        counts = (
            _count(len(inventory.machines), "machine"),
            _count(len(inventory.profiles), "profile"),
            _count(len(inventory.groups), "group"),
        )
        parts.append(f"inventory {config.inventory} ({', '.join(counts)})")
    elif config.inventory is not None:
        parts.append(f"inventory {config.inventory} (not loaded)")
    errors = _errors(findings)
    warnings = len(findings) - errors
    if not errors and not warnings:
        verdict = "no problems"
    else:
        tally = ((errors, "problem"), (warnings, "warning"))
        verdict = ", ".join(_count(count, what) for count, what in tally if count)
    return f"checked {', '.join(parts)}: {verdict}"


def _errors(findings: Sequence[Finding]) -> int:
    return sum(finding.error for finding in findings)


def _count(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"
