"""A verdict per boot attempt: did the machine boot, and if not, where and why did it stop.

A machine's :class:`~netbootd.boot.journal.BootEvent` records are read back here into boot
attempts (:func:`attempts`), and each attempt into a :class:`Verdict` (:func:`verdict`): booted,
stalled (at which step, with a likely cause in an operator's words and the file it is about)
or still in progress, and the timeline of the steps it reached, with their times and sizes, for
a page to draw ``DHCP -> loader -> config -> kernel -> initrd -> done``.

Pure: events in, frozen values out. It reads no clock (the caller passes ``now``), stores and
logs nothing, and never raises on what the journal holds, however odd: a field it cannot read
counts as absent. Gathering the events is :mod:`netbootd.services`'s, storing them
:mod:`netbootd.store`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from netbootd.boot.journal import BootEvent, Kind, Role, Service, file_role

__all__ = [
    "IDLE",
    "QUIET",
    "Attempt",
    "State",
    "Step",
    "TimelineStep",
    "Verdict",
    "attempts",
    "machine_verdicts",
    "verdict",
]

# Seconds with no event after which the machine's next event begins a new attempt (until it has
# reached its kernel; see attempts()). Inside one attempt the longest silences are the
# firmware's: RFC 2131 §4.1's DHCP retransmission backoff (4, 8, 16, 32, 64 s) gives up after
# about two minutes, a PXE or GRUB menu waits out its timeout, iPXE retries its DHCP and a
# TFTP transfer its blocks. Five minutes is past all of that, and short of the few minutes an
# operator takes to notice a stuck machine and reset it.
IDLE = 300.0

# Seconds with no event after which an attempt that has not booted is declared stalled. A
# working client is never that quiet between steps: its TFTP and HTTP fetches follow each other
# within seconds, DHCP retries within 64 s. A transfer is journaled when it ends, so a very
# large one (a 500 MB initrd over TFTP) can look quiet for longer: the verdict turns back as
# soon as its event arrives.
QUIET = 60.0


class State(StrEnum):
    """Where an attempt stands."""

    BOOTED = "booted"
    STALLED = "stalled"
    IN_PROGRESS = "in-progress"


class Step(StrEnum):
    """The steps of a network boot, in the order a boot reaches them."""

    DHCP = "dhcp"  # it asked
    OFFERED = "offered"  # it was offered an address (or, from a proxyDHCP, boot information)
    ACKNOWLEDGED = "acknowledged"  # its request was acknowledged, normally with a boot file
    LOADER = "loader"  # it fetched a network boot program (iPXE, pxelinux.0, GRUB, shim)
    CONFIG = "config"  # ... and that program's configuration or script
    KERNEL = "kernel"
    INITRD = "initrd"
    DONE = "done"  # kernel and initrd both fetched, or the installed system said so


_ORDER = {step: index for index, step in enumerate(Step)}
_ROLE_STEP = {
    Role.LOADER: Step.LOADER,
    Role.CONFIG: Step.CONFIG,
    Role.KERNEL: Step.KERNEL,
    Role.INITRD: Step.INITRD,
}

# DHCP decisions, as the transaction line names them (services/dhcp): the answers that offer,
# those that acknowledge, and the silences.
_OFFERS = frozenset({"OFFER", "PROXY-OFFER"})
_ACKS = frozenset({"ACK", "PROXY-ACK", "BOOT-ITEM-ACK", "BOOTREPLY"})
_SILENCES = frozenset({"ignored", "unknown-item"})
_NO_ADDRESS = frozenset({"", "-", "0.0.0.0"})  # a proxyDHCP answer gives none (PXE 2.1 §2.2.3)
_SIZE_QUERY = "size query"  # a TFTP client that only asked the size (tsize) and stopped


@dataclass(frozen=True, slots=True)
class Attempt:
    """The events of one boot attempt of one machine, in the order they happened."""

    events: tuple[BootEvent, ...]

    @property
    def started(self) -> float:
        """The time of its first event (0.0 for an attempt with none)."""
        return self.events[0].time if self.events else 0.0

    @property
    def last(self) -> float:
        """The time of its last event (0.0 for an attempt with none)."""
        return self.events[-1].time if self.events else 0.0


@dataclass(frozen=True, slots=True)
class TimelineStep:
    """One step of an attempt's timeline, when it was first reached.

    ``file``: the boot file handed out (DHCP steps) or the file fetched; ``bytes`` and
    ``seconds``: the transfer's (0 for a DHCP step, or when the journal did not say).
    """

    step: Step
    time: float
    file: str = ""
    bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of one boot attempt.

    ``step``: the furthest step it reached. ``cause``: why it stalled, in words for an
    operator ("" when it booted or is in progress); ``file``: the file the stall is about ("" if
    none). ``started``: its first event's time; ``ended``: when it booted (the event that made
    it so), otherwise its last event's time. ``steps``: the timeline, one entry per step reached,
    in the order of :class:`Step`.
    """

    state: State
    step: Step
    cause: str
    file: str
    started: float
    ended: float
    steps: tuple[TimelineStep, ...]


# --------------------------------------------------------------------------------------------
# Reading an attempt's events


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _is_transfer(event: BootEvent) -> bool:
    return event.kind == Kind.TRANSFER


def _role(event: BootEvent) -> Role:
    """The transfer's role as journaled, else as the file's name says."""
    try:
        return Role(event.get("role"))
    except ValueError:
        return file_role(event.get("file"))


def _answered(event: BootEvent) -> bool:
    """A transfer answered well: "ok", and no HTTP error status."""
    return event.ok and _int(event.get("status")) < 400


def _probe(event: BootEvent) -> bool:
    """A question about a file that fetched none of it: a TFTP size query, or an HTTP HEAD
    that was answered (UEFI HTTP Boot asks one before its GET)."""
    if event.get("result") == _SIZE_QUERY:
        return True
    return event.get("method") == "HEAD" and _answered(event)


def _succeeded(event: BootEvent) -> bool:
    """A transfer that fetched its file: answered well, and not a probe."""
    return _answered(event) and event.get("method") != "HEAD"


def _failed(event: BootEvent) -> bool:
    """A transfer that ended badly; a probe is neither a success nor a failure."""
    return _is_transfer(event) and not _succeeded(event) and not _probe(event)


def _name(event: BootEvent) -> str:
    return event.get("file").lstrip("/")


def _failure(event: BootEvent) -> str:
    """A failed transfer in an operator's words."""
    service = event.service.upper() if event.service else "transfer"
    name = _name(event) or "a file"
    result = event.get("result")
    status = _int(event.get("status"))
    if status >= 400:
        return f"HTTP {status} for {name}"
    if result == "timed out":
        block = event.get("block")
        if block:
            return f"{service} timed out at block {block} of {name}"
        return f"{service} timed out sending {name}"
    if result == "not found":
        return f"{service}: {name} not found"
    if result.startswith("access denied"):
        reason = result.removeprefix("access denied").lstrip(": ")
        return f"{service}: access denied to {name}" + (f" ({reason})" if reason else "")
    if result.startswith("cut short"):
        sent, size = event.get("bytes"), event.get("size")
        part = f" after {sent} of {size} bytes" if sent and size else ""
        return f"{service}: {name} {result}{part}"
    if result.startswith("error"):
        reason = result.removeprefix("error").lstrip(": ")
        return f"{service}: error sending {name}" + (f": {reason}" if reason else "")
    return f"{service}: {name} {result or 'failed'}"


def _starts_boot(event: BootEvent) -> bool:
    """A message that begins a network boot: a boot client's DISCOVER or BOOTP request. An
    installed system's own DHCP (client "plain") begins none."""
    return (
        event.service == Service.DHCP
        and event.kind in ("DISCOVER", "BOOTP")
        and event.get("client") != "plain"
    )


@dataclass(frozen=True, slots=True)
class _Reading:
    """What an attempt's events come to, before the clock is asked."""

    timeline: dict[Step, TimelineStep]
    furthest: Step
    booted_at: float | None  # when kernel and initrd were both in, or the system said done
    kernel: bool  # a kernel was fetched
    initrd_tried: bool  # an initrd was asked for, whatever came of it
    loops: tuple[str, int]  # the loader fetched most often, and how often
    latest: BootEvent | None  # the last event that tells where the boot stands
    unanswered: str  # a silence after ``latest``, when that was a DHCP answer: its reason


def _read(events: Sequence[BootEvent]) -> _Reading:
    timeline: dict[Step, TimelineStep] = {}
    loaders: Counter[str] = Counter()
    kernel = initrd = initrd_tried = False
    booted_at: float | None = None
    latest: BootEvent | None = None
    unanswered = ""

    def reach(step: Step, event: BootEvent, file: str, transfer: bool) -> None:
        if step not in timeline:
            sent = _int(event.get("bytes")) if transfer else 0
            took = _float(event.get("seconds")) if transfer else 0.0
            timeline[step] = TimelineStep(step, event.time, file, sent, took)

    for event in events:
        if event.service == Service.DHCP:
            decision = event.get("decision")
            reach(Step.DHCP, event, "", False)
            if decision in _OFFERS:
                reach(Step.OFFERED, event, event.get("file"), False)
            elif decision in _ACKS:
                reach(Step.ACKNOWLEDGED, event, event.get("file"), False)
            answer = latest if latest is not None and latest.service == Service.DHCP else None
            if (
                decision in _SILENCES
                and answer is not None
                and answer.get("decision") not in _SILENCES
            ):
                # Silence after an answer is a proxy leaving the site server's REQUEST alone,
                # or the client taking another server's offer: the answer still says more.
                unanswered = event.get("reason") or decision
                continue
            latest, unanswered = event, ""
        elif _is_transfer(event):
            latest, unanswered = event, ""
            role = _role(event)
            if role is Role.INITRD:
                initrd_tried = True
            if not _succeeded(event):
                continue
            step = _ROLE_STEP.get(role)
            if step is not None:
                reach(step, event, _name(event), True)
            if role is Role.LOADER:
                loaders[_name(event)] += 1
            kernel = kernel or role is Role.KERNEL
            initrd = initrd or role is Role.INITRD
            # The installer asking for its kickstart or preseed: the kernel it came in booted.
            provisioned = role is Role.PROVISION and kernel
            if booted_at is None and ((kernel and initrd) or provisioned):
                booted_at = event.time
                reach(Step.DONE, event, "", False)
        elif event.kind == Kind.INSTALLED and booted_at is None:
            booted_at = event.time
            reach(Step.DONE, event, "", False)
    furthest = max(timeline, key=_ORDER.__getitem__, default=Step.DHCP)
    loops = loaders.most_common(1)[0] if loaders else ("", 0)
    return _Reading(timeline, furthest, booted_at, kernel, initrd_tried, loops, latest, unanswered)


# --------------------------------------------------------------------------------------------
# Attempts


def attempts(events: Sequence[BootEvent], *, idle: float = IDLE) -> list[Attempt]:
    """Split one machine's ``events`` into its boot attempts, oldest first.

    The events are taken in the order of their time and id. A new attempt begins:

    - once the attempt before has fetched its kernel (booted or not), at the next message that
      begins a network boot: a boot client's DHCP DISCOVER or BOOTP request. After a kernel
      only a firmware starting over sends one; what the booted system sends (its own DHCP, an
      installer's fetches, the inventory's "installed") still belongs to the attempt, however
      late it comes;
    - before that, at any event that comes more than ``idle`` seconds after the one before it
      (a transfer counts from when it began, its ``seconds`` before it was journaled), except
      the inventory's, which speak of a boot and begin none.

    Otherwise the event continues the attempt: an iPXE chainload is one attempt, its second
    DHCP exchange (iPXE's own DISCOVER and REQUEST after the firmware's fetched undionly.kpxe
    or snponly.efi) included. So is a reset within ``idle`` of a stalled attempt's last event;
    a loader fetched again that way reads as a loop.
    """
    ordered = sorted(events, key=lambda event: (event.time, event.id))
    found: list[list[BootEvent]] = []
    kernel = False  # the current attempt has fetched its kernel
    for event in ordered:
        if found:
            previous = found[-1][-1]
            began = event.time - max(_float(event.get("seconds")), 0.0)
            if kernel:
                new = _starts_boot(event)
            else:
                new = began - previous.time > idle and event.service != Service.INVENTORY
        else:
            new = True
        if new:
            found.append([])
            kernel = False
        found[-1].append(event)
        kernel = kernel or (_succeeded(event) and _role(event) is Role.KERNEL)
    return [Attempt(tuple(group)) for group in found]


# --------------------------------------------------------------------------------------------
# The verdict


def _dhcp_cause(event: BootEvent, unanswered: str) -> tuple[str, str]:
    decision, reason = event.get("decision"), event.get("reason")
    address, file = event.get("address"), event.get("file")
    after = f" (then not answered: {unanswered})" if unanswered else ""
    if decision in _SILENCES:
        return (f"not answered: {reason}" if reason else "not answered"), ""
    if decision == "NAK":
        return (f"refused (NAK): {reason}" if reason else "refused (NAK)"), ""
    if decision in _OFFERS:
        if address in _NO_ADDRESS:
            cause = f"offered the boot file {file or '(none)'} but the client neither asked"
            return f"{cause} for it nor fetched it{after}", file
        return f"offered {address} but the client never requested it{after}", file
    if decision in _ACKS:
        if file:
            return f"was told to boot {file} but never fetched it{after}", file
        if event.get("client") == "plain":
            return f"acknowledged {address} with no boot file: a plain DHCP client", ""
        return f"acknowledged {address} but handed out no boot file", ""
    if event.kind == "DECLINE":
        return f"declined the address {address}: it is in use on the network", ""
    if event.kind == "RELEASE":
        return f"released its address {address}", ""
    return f"sent {event.kind or 'a message'}, answered {decision or 'nothing'}", file


def _stall_cause(reading: _Reading, events: Sequence[BootEvent]) -> tuple[str, str]:
    """The likeliest cause of a stall, and the file it is about, from where the boot stands."""
    latest = reading.latest
    if latest is None:
        return "sent nothing that tells where its boot stands", ""
    if latest.service == Service.DHCP:
        return _dhcp_cause(latest, reading.unanswered)
    name = _name(latest)
    if _failed(latest):
        return _failure(latest), name
    if _probe(latest):
        return f"asked the size of {name} but never fetched it", name
    role = _role(latest)
    if role not in _ROLE_STEP:
        # A module or a provisioning file: the furthest step says more of what is missing.
        step = reading.timeline.get(reading.furthest)
        roles = {value: key for key, value in _ROLE_STEP.items()}
        if step is None or step.step not in roles:
            return f"fetched {name} and then nothing more", name
        role, name = roles[step.step], step.file
    if role is Role.KERNEL:
        # Not booted with its kernel in: an initrd was asked for and did not come.
        for event in reversed(events):
            if _is_transfer(event) and _role(event) is Role.INITRD and _failed(event):
                return f"fetched the kernel {name} but not the initrd: {_failure(event)}", name
        return f"fetched the kernel {name} but not its initrd", name
    if role is Role.INITRD:
        return f"fetched the initrd {name} but never the kernel", name
    if role is Role.LOADER:
        return f"fetched the loader {name} but never asked for its configuration or script", name
    return f"fetched its configuration {name} but never the kernel", name


def verdict(attempt: Attempt, now: float, *, quiet: float = QUIET) -> Verdict:
    """The verdict on ``attempt`` at the time ``now``.

    - **booted**: a kernel and an initrd were both fetched, the installer fetched its
      provisioning file after the kernel, or the installed system said it is done (step
      ``done``). Whether a kernel needs an initrd the journal cannot tell, so a kernel fetched
      with no initrd asked for at all counts as booted too once the attempt has been quiet for
      ``quiet`` seconds (step ``kernel``): a kernel that boots on its own asks for nothing more.
    - **stalled**, at once: the same loader fetched twice or more with no kernel (the loader
      is handed itself again: a chainload loop); or the last thing the machine did was a
      transfer that failed (it may retry: its next event makes the attempt in progress again).
    - **stalled**, once nothing has happened for ``quiet`` seconds, with the cause read from
      the last thing that tells where the boot stands: a DHCP silence or NAK, an offer never
      requested, a boot file never fetched, a loader or configuration not followed by the next
      step.
    - **in progress** otherwise.
    """
    events = attempt.events
    reading = _read(events)
    timeline = tuple(reading.timeline[step] for step in Step if step in reading.timeline)
    started, last = attempt.started, attempt.last

    def decide(state: State, step: Step, cause: str = "", file: str = "") -> Verdict:
        ended = last
        if state is State.BOOTED:
            ended = reading.timeline[step].time
        return Verdict(state, step, cause, file, started, ended, timeline)

    if not events:
        return decide(State.IN_PROGRESS, Step.DHCP)  # nothing has happened yet
    if reading.booted_at is not None:
        return decide(State.BOOTED, Step.DONE)
    loader, times = reading.loops
    if times >= 2 and not reading.kernel:
        return decide(
            State.STALLED, reading.furthest, f"looped: fetched {loader} {times} times", loader
        )
    latest = reading.latest
    if latest is not None and latest is events[-1] and _failed(latest):
        return decide(State.STALLED, reading.furthest, _failure(latest), _name(latest))
    if now - last < quiet:
        return decide(State.IN_PROGRESS, reading.furthest)
    if reading.kernel and not reading.initrd_tried:
        return decide(State.BOOTED, Step.KERNEL)
    cause, file = _stall_cause(reading, events)
    return decide(State.STALLED, reading.furthest, cause, file)


def machine_verdicts(
    events: Sequence[BootEvent], now: float, *, idle: float = IDLE, quiet: float = QUIET
) -> list[tuple[Attempt, Verdict]]:
    """One machine's attempts, each with its verdict at ``now``, the latest last."""
    return [
        (attempt, verdict(attempt, now, quiet=quiet)) for attempt in attempts(events, idle=idle)
    ]
