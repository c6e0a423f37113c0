"""What a machine's boot script or config says: Jinja2 templates rendered with its variables.

Pure: templates arrive as text and leave as text; nothing here reads files or knows about
sockets. The environment is sandboxed (an operator's template can read the variables it is
given and nothing else) and strict (a misspelt variable is an error, not an empty string).

The built-in templates cover each :class:`~netbootd.boot.inventory.Method` for iPXE, pxelinux
and GRUB; a profile's own template replaces the built-in one for its method. Every template sees
the same variables (:meth:`BootContext.variables`); the profile's command line is itself a
template, rendered first, and is available as ``cmdline``.

A render is bounded (:class:`RenderLimits`): an operator's template that loops without end or
grows without bound stops with a :class:`RenderError` at its time or output limit, so it cannot
hold the thread it runs in. Python cannot stop a thread from outside, so the render stops itself:
every ``for`` loop of a template is compiled to step through :func:`_bounded`, and every call a
template makes (a macro, ``loop(...)`` of a recursive loop, ``range``) passes the sandbox's
``call``; both count, and read the clock the caller gave every few hundred steps. ``*``, ``**``
and ``+`` refuse a result past the output limit before making it; what ``~``, a filter or a call
made is measured as soon as it is made, so a value that doubles each time round a loop is stopped
at twice the limit; and the output is counted as it streams. One call can still make more than
that from values within it (``s.replace('x', s)``); memory running out is then a
:class:`RenderError` too. Templates cannot read other files: ``include``, ``import`` and
``extends`` are refused when the template is compiled.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from netbootd.boot.inventory import Method, Profile


class Flavour(StrEnum):
    """The kind of file a firmware or loader asks for."""

    IPXE = "ipxe"  # an iPXE script
    PXELINUX = "pxelinux"  # a pxelinux.cfg file
    GRUB = "grub"  # a grub.cfg


class RenderError(Exception):
    """A template that cannot be compiled or rendered; the message names it and the line.

    ``line`` and ``reason`` are the two apart, for a report that places the line itself."""

    def __init__(self, message: str, line: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.reason = reason if reason is not None else message


# A boot script or config is a few hundred bytes, a kickstart or cloud-init file a few kilobytes,
# rendered in well under a millisecond: these leave room for far larger ones.
RENDER_SECONDS = 2.0
RENDER_MAX_BYTES = 16 * 1024 * 1024
# A render still running after this long (seconds) is not an ordinary one: from then on it
# pauses at each look at the clock.
RENDER_SHARE_AFTER = 0.01


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """How long one render may take and how much it may write.

    ``clock`` is the caller's monotonic clock, in seconds (this module reads none). ``pause``,
    if given, is called at each look at the clock once a render has run past
    :data:`RENDER_SHARE_AFTER`: the caller's way to let its other threads run first (a render
    holds Python's interpreter lock while it runs). A render given no limits has only the
    checks on sizes."""

    clock: Callable[[], float]
    seconds: float = RENDER_SECONDS
    max_bytes: int = RENDER_MAX_BYTES
    pause: Callable[[], None] | None = None


# Loop steps and calls between two looks at the clock: a look costs a call, and a few hundred
# steps of a template take microseconds.
_CLOCK_EVERY = 256
# The filter every loop's iterable goes through, and the one every ``~`` goes through (names no
# template has a reason to use).
_BOUNDED = "netbootd_bounded"
_SIZED = "netbootd_sized"


class _Exceeded(Exception):  # noqa: N818 - internal: becomes a RenderError
    """A limit reached in the middle of a render."""


class _Watch:
    """One render's limits as it runs: its deadline, and the steps (loop items, calls) taken."""

    __slots__ = ("clock", "deadline", "exceeded", "limits", "share_from", "steps")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.clock = limits.clock
        start = limits.clock()
        self.deadline = start + limits.seconds
        self.share_from = start + RENDER_SHARE_AFTER
        self.steps = 0
        self.exceeded: str | None = None

    def stop(self, reason: str) -> _Exceeded:
        self.exceeded = reason
        return _Exceeded(reason)

    def check_time(self) -> None:
        if self.exceeded is not None:
            raise _Exceeded(self.exceeded)
        now = self.clock()
        if now > self.deadline:
            raise self.stop(f"took longer than {self.limits.seconds:g} s, its time limit")
        if now > self.share_from and self.limits.pause is not None:
            self.limits.pause()

    def step(self) -> None:
        self.steps += 1
        if self.steps % _CLOCK_EVERY == 0:
            self.check_time()


_WATCH: ContextVar[_Watch | None] = ContextVar("netbootd_render_watch", default=None)


def _bounded(iterable: Iterable[Any]) -> Iterator[Any]:
    # Each step of a loop, even one whose body writes nothing, so a nest of loops (each capped
    # at the sandbox's MAX_RANGE, but multiplied) is stopped wherever it spins.
    watch = _WATCH.get()
    if watch is None:
        yield from iterable
        return
    for item in iterable:
        watch.step()
        yield item


def _size(value: object) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else None


def _limit() -> int:
    watch = _WATCH.get()
    return watch.limits.max_bytes if watch is not None else RENDER_MAX_BYTES


def _sized(value: Any) -> Any:
    # Made already, but measured before anything builds on it.
    size = _size(value)
    if size is not None and size > (limit := _limit()):
        raise _Exceeded(f"made a value of more than {limit} bytes")
    return value


def _checked_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    # functools.wraps keeps Jinja2's marks on the filter (what context it is passed).
    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        return _sized(function(*args, **kwargs))

    return checked


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` checked before they make a value: one expression
    (``'x' * 10**9``, ``10 ** 1000000000``) is a single step, too long for any count of steps
    to stop, and would take the memory first."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limit = _limit()
        if operator == "+":
            sizes = (_size(left), _size(right))
            if sizes[0] is not None and sizes[1] is not None and sizes[0] + sizes[1] > limit:
                raise _Exceeded(f"a sum of more than {limit} bytes")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(times, int) and size * times > limit:
                    raise _Exceeded(f"a repeated value of more than {limit} bytes")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * math.log2(abs(left)) > 8 * limit
        ):
            raise _Exceeded(f"a power of more than {limit} bytes")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # Macros and recursive loops recurse through here: each call is a step.
        watch = _WATCH.get()
        if watch is not None:
            watch.step()
        return _sized(super().call(__context, __obj, *args, **kwargs))


_ENVIRONMENT = _BoundedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_ENVIRONMENT.filters["basename"] = lambda value: str(value).rsplit("/", 1)[-1]
_ENVIRONMENT.filters.update(
    {name: _checked_filter(function) for name, function in _ENVIRONMENT.filters.items()}
)
_ENVIRONMENT.filters[_BOUNDED] = _bounded
_ENVIRONMENT.filters[_SIZED] = _sized

# The built-in templates, by flavour and method. ``exit`` hands the machine back to its firmware,
# which tries its next boot device; ``local`` boots the first disk where the loader can.
_BUILTIN: Mapping[tuple[Flavour, Method], str] = MappingProxyType(
    {
        (Flavour.IPXE, Method.IPXE): (
            "#!ipxe\n"
            "# netbootd: {{ describe }}\n"
            "kernel {{ kernel_url }}"
            "{% for url in initrd_urls %} initrd={{ url | basename }}{% endfor %}"
            "{% if cmdline %} {{ cmdline }}{% endif %}\n"
            "{% for url in initrd_urls %}initrd {{ url }}\n{% endfor %}"
            "boot\n"
        ),
        (Flavour.IPXE, Method.LOCAL): (
            "#!ipxe\n"
            "# netbootd: {{ describe }}\n"
            "{% if platform == 'pcbios' %}sanboot --no-describe --drive 0x80 || exit\n"
            "{% else %}exit\n{% endif %}"
        ),
        (Flavour.IPXE, Method.EXIT): "#!ipxe\n# netbootd: {{ describe }}\nexit\n",
        (Flavour.PXELINUX, Method.PXELINUX): (
            "# netbootd: {{ describe }}\n"
            "DEFAULT netbootd\n"
            "PROMPT 0\n"
            "TIMEOUT 0\n"
            "LABEL netbootd\n"
            "  KERNEL {{ kernel }}\n"
            "{% if initrds %}  INITRD {{ initrds | join(',') }}\n{% endif %}"
            "  APPEND {{ cmdline }}\n"
            "  IPAPPEND 2\n"
        ),
        (Flavour.PXELINUX, Method.LOCAL): (
            "# netbootd: {{ describe }}\nDEFAULT local\nPROMPT 0\nLABEL local\n  LOCALBOOT 0\n"
        ),
        (Flavour.PXELINUX, Method.EXIT): (
            "# netbootd: {{ describe }}\nDEFAULT next\nPROMPT 0\nLABEL next\n  LOCALBOOT -1\n"
        ),
        (Flavour.GRUB, Method.GRUB): (
            "# netbootd: {{ describe }}\n"
            "set timeout=0\n"
            "menuentry 'netbootd: {{ profile }}' {\n"
            "  linux /{{ kernel }}{% if cmdline %} {{ cmdline }}{% endif %}\n"
            "{% if initrds %}  initrd{% for path in initrds %} /{{ path }}{% endfor %}\n"
            "{% endif %}}\n"
        ),
        (Flavour.GRUB, Method.LOCAL): "# netbootd: {{ describe }}\nexit\n",
        (Flavour.GRUB, Method.EXIT): "# netbootd: {{ describe }}\nexit\n",
    }
)


def method_flavour(method: Method) -> Flavour | None:
    """The flavour a method's own template is written in; None for local and exit, which have a
    built-in form in every flavour."""
    return {
        Method.IPXE: Flavour.IPXE,
        Method.PXELINUX: Flavour.PXELINUX,
        Method.GRUB: Flavour.GRUB,
    }.get(method)


def builtin_template(flavour: Flavour, method: Method) -> str | None:
    """The built-in template for a method in a flavour, or None when that pair means nothing
    (an iPXE script for a pxelinux profile: the policy never asks for one)."""
    return _BUILTIN.get((flavour, method))


def is_url(path: str) -> bool:
    """Whether a profile's path is a URL (taken as given) rather than a path below the root."""
    return path.startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True)
class BootContext:
    """Everything a template may use about one machine and this server."""

    mac: str
    profile: Profile
    server: str
    http_port: int = 80
    tftp_port: int = 69
    ip: str | None = None
    uuid: str | None = None
    arch: str = "unknown"
    platform: str = "pcbios"  # iPXE's ${platform}: pcbios or efi
    machine: str | None = None
    hostname: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def http_base(self) -> str:
        return f"http://{self.server}" + ("" if self.http_port == 80 else f":{self.http_port}")

    @property
    def files_url(self) -> str:
        """Where this machine's own files are served: ``<http_base>/m/<mac with dashes>``."""
        return f"{self.http_base}/{machine_prefix(self.mac)}"

    def url(self, path: str) -> str:
        return path if is_url(path) else f"{self.http_base}/{path}"

    def variables(self) -> dict[str, Any]:
        profile = self.profile
        kernel = profile.kernel or ""
        return {
            "mac": self.mac,
            "mac_dashes": self.mac.replace(":", "-"),
            "ip": self.ip or "",
            "uuid": self.uuid or "",
            "arch": self.arch,
            "platform": self.platform,
            "machine": self.machine or "",
            "hostname": self.hostname or self.machine or "",
            "labels": dict(self.labels),
            "profile": profile.name,
            "method": str(profile.method),
            "server": self.server,
            "http_port": self.http_port,
            "tftp_port": self.tftp_port,
            "http_base": self.http_base,
            "files_url": self.files_url,
            "kernel": kernel,
            "kernel_url": self.url(kernel) if kernel else "",
            "initrds": list(profile.initrds),
            "initrd_urls": [self.url(path) for path in profile.initrds],
            "describe": (
                f"machine {self.machine or '(undescribed) ' + self.mac}, profile {profile.name}"
            ),
        }


def machine_prefix(mac: str) -> str:
    """The URL path below which a machine's own files live."""
    return "m/" + mac.lower().replace(":", "-")


# The tags that would read another template: the environment has no loader, so they could
# only fail, and at render time.
_OTHER_FILES = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> Template:
    # Every request for a rendered file renders one of a few texts: compile each once.
    tree = _ENVIRONMENT.parse(text)
    for node in tree.find_all(_OTHER_FILES):
        tag = type(node).__name__.lower().replace("fromimport", "from ... import")
        raise TemplateSyntaxError(
            f"{tag}: templates cannot read other files; write it into this one", node.lineno
        )
    return _ENVIRONMENT.from_string(_Bound().visit(tree))


class _Bound(NodeTransformer):
    """Every loop's iterable through :func:`_bounded`, every ``~`` through :func:`_sized`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - the visitor's names
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _BOUNDED, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Filter(node, _SIZED, [], [], None, None, lineno=node.lineno)


def compile_template(text: str, name: str) -> None:
    """Raise :class:`RenderError` (with the line) if ``text`` is not a valid template."""
    try:
        _compiled(text)
    except TemplateSyntaxError as exc:
        reason = exc.message or "syntax error"
        raise RenderError(f"{name}:{exc.lineno}: {reason}", exc.lineno, reason) from None


def render_text(
    text: str, name: str, variables: Mapping[str, Any], limits: RenderLimits | None = None
) -> str:
    """Render one template; errors name the template and, when known, the line.

    With ``limits``, a render past its time or output limit raises :class:`RenderError`."""
    try:
        template = _compiled(text)
    except TemplateSyntaxError as exc:
        raise RenderError(f"{name}:{exc.lineno}: {exc.message}") from None
    watch = _Watch(limits) if limits is not None else None
    token = _WATCH.set(watch)
    try:
        return _collect(template.generate(variables), watch)
    except _Exceeded as exc:
        reason = watch.exceeded if watch is not None and watch.exceeded else str(exc)
        raise RenderError(f"{name}: {reason}") from None
    except RecursionError:
        reason = "calls itself too deeply (a macro or a recursive loop without end)"
        raise RenderError(f"{name}: {reason}") from None
    except MemoryError:
        raise RenderError(f"{name}: ran out of memory") from None
    except TemplateError as exc:
        raise RenderError(f"{name}: {exc}") from None
    finally:
        _WATCH.reset(token)


def _collect(chunks: Iterable[str], watch: _Watch | None) -> str:
    parts = []
    written = 0
    limit = watch.limits.max_bytes if watch is not None else RENDER_MAX_BYTES
    for chunk in chunks:
        written += len(chunk) if chunk.isascii() else len(chunk.encode())
        if written > limit:
            raise _Exceeded(f"wrote more than {limit} bytes, its output limit")
        if watch is not None:
            watch.check_time()
        parts.append(chunk)
    if watch is not None and watch.exceeded is not None:
        # Stopped, even if something in the template's path swallowed the stop.
        raise _Exceeded(watch.exceeded)
    return "".join(parts)


# Every name a template may use: the variables of every context, ``cmdline`` (rendered first,
# so not in the command line itself), and Jinja2's own globals (range, dict, namespace...).
VARIABLES: frozenset[str] = frozenset(
    BootContext("00:00:00:00:00:00", Profile("-", Method.EXIT), "0.0.0.0").variables()
)
GLOBALS: frozenset[str] = frozenset(_ENVIRONMENT.globals)
# The variables that are empty for a machine the inventory does not describe.
UNDESCRIBED_EMPTY = ("hostname", "machine")


@dataclass(frozen=True, slots=True)
class NameUse:
    """A variable a template reads, at the first line that reads it; ``tested`` when the
    template also tests it (``{% if hostname %}``, ``hostname or ...``), so copes with it empty."""

    name: str
    line: int
    tested: bool


def template_uses(text: str) -> tuple[NameUse, ...]:
    """The variables ``text`` reads without setting them itself, in line order.

    ``text`` must compile (see :func:`compile_template`)."""
    tree = _ENVIRONMENT.parse(text)
    free = meta.find_undeclared_variables(tree)
    tested: set[str] = set()
    for node in tree.find_all((nodes.Or, nodes.If, nodes.CondExpr)):
        test: nodes.Node
        if isinstance(node, nodes.Or):
            test = node.left
        elif isinstance(node, nodes.If | nodes.CondExpr):
            test = node.test
        else:
            continue
        tested.update(name.name for name in _names(test))
    first: dict[str, int] = {}
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name in free:
            first.setdefault(name.name, name.lineno)
    uses = (NameUse(name, line, name in tested) for name, line in first.items())
    return tuple(sorted(uses, key=lambda use: (use.line, use.name)))


def _names(node: nodes.Node) -> list[nodes.Name]:
    found = [node] if isinstance(node, nodes.Name) else []
    return found + list(node.find_all(nodes.Name))


def unknown_variable(use: NameUse, *, cmdline: bool = False) -> str | None:
    """Why ``use`` is not a variable templates get, or None if it is one."""
    known = VARIABLES if cmdline else VARIABLES | {"cmdline"}
    if use.name in known or use.name in GLOBALS:
        return None
    close = difflib.get_close_matches(use.name, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see the README's template variables"
    return f"{use.name!r} is not a template variable ({hint})"


def boot_variables(context: BootContext, limits: RenderLimits | None = None) -> dict[str, Any]:
    """The variables of every template, ``cmdline`` (itself rendered) included."""
    variables = context.variables()
    profile = context.profile
    variables["cmdline"] = render_text(
        profile.cmdline, f"profile {profile.name}: cmdline", variables, limits
    ).strip()
    return variables


def render_boot(
    context: BootContext,
    flavour: Flavour,
    custom: str | None = None,
    limits: RenderLimits | None = None,
) -> str:
    """The boot script or config of ``flavour`` for the machine in ``context``.

    ``custom`` is the text of the profile's own template, which replaces the built-in one.
    ``limits`` bound the command line's render and the template's, each.
    """
    profile = context.profile
    if custom is not None:
        template, name = custom, profile.template or f"profile {profile.name}"
    else:
        found = builtin_template(flavour, profile.method)
        if found is None:
            raise RenderError(
                f"profile {profile.name}: method {profile.method} has no {flavour} form"
            )
        template, name = found, f"built-in {flavour} template for {profile.method}"
    return render_text(template, name, boot_variables(context, limits), limits)
