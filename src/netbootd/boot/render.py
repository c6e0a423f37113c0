"""What a machine's boot script or config says: Jinja2 templates rendered with its variables.

Pure: templates arrive as text and leave as text; nothing here reads files or knows about
sockets. The environment is sandboxed (an operator's template can read the variables it is
given and nothing else) and strict (a misspelt variable is an error, not an empty string).

The built-in templates cover each :class:`~netbootd.boot.inventory.Method` for iPXE, pxelinux
and GRUB; a profile's own template replaces the built-in one for its method. Every template sees
the same variables (:meth:`BootContext.variables`); the profile's command line is itself a
template, rendered first, and is available as ``cmdline``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

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


_ENVIRONMENT = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_ENVIRONMENT.filters["basename"] = lambda value: str(value).rsplit("/", 1)[-1]

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


def _is_url(path: str) -> bool:
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
        return path if _is_url(path) else f"{self.http_base}/{path}"

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


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> Template:
    # Every request for a rendered file renders one of a few texts: compile each once.
    return _ENVIRONMENT.from_string(text)


def compile_template(text: str, name: str) -> None:
    """Raise :class:`RenderError` (with the line) if ``text`` is not a valid template."""
    try:
        _compiled(text)
    except TemplateSyntaxError as exc:
        reason = exc.message or "syntax error"
        raise RenderError(f"{name}:{exc.lineno}: {reason}", exc.lineno, reason) from None


def render_text(text: str, name: str, variables: Mapping[str, Any]) -> str:
    """Render one template; errors name the template and, when known, the line."""
    try:
        return _compiled(text).render(variables)
    except TemplateSyntaxError as exc:
        raise RenderError(f"{name}:{exc.lineno}: {exc.message}") from None
    except TemplateError as exc:
        raise RenderError(f"{name}: {exc}") from None


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


def boot_variables(context: BootContext) -> dict[str, Any]:
    """The variables of every template, ``cmdline`` (itself rendered) included."""
    variables = context.variables()
    profile = context.profile
    variables["cmdline"] = render_text(
        profile.cmdline, f"profile {profile.name}: cmdline", variables
    ).strip()
    return variables


def render_boot(context: BootContext, flavour: Flavour, custom: str | None = None) -> str:
    """The boot script or config of ``flavour`` for the machine in ``context``.

    ``custom`` is the text of the profile's own template, which replaces the built-in one.
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
    return render_text(template, name, boot_variables(context))
