"""A private lab network: a namespace with a bridge, taps for VMs, and extra hosts on veths.

Everything the lab creates lives inside namespaces it made itself (``nbd-<pid>-<n>``), so no
packet ever reaches the machine's real interfaces. :class:`Lab` is a context manager; leaving
it, normally, on an exception or on Ctrl-C, stops every process it started (whole process
groups), deletes its links and its namespaces. Processes it starts also get SIGKILL from the
kernel if the Python process that started them dies, so a killed test run leaves no VM behind;
a namespace left that way is removed by the next lab that starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

NS_PREFIX = "nbd-"
_counter = itertools.count(1)

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def _die_with_parent() -> None:
    """Run in the child between fork and exec: SIGKILL it when its parent thread exits."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _load_libc() -> None:
    global _libc  # noqa: PLW0603
    if _libc is None:
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """The lab could not be set up or a command in it failed."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a host command (``ip ...``) and return its stdout; raise LabError on failure."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(token) for token in out.split() if token.isdigit()]


def sweep_stale_namespaces() -> list[str]:
    """Delete lab namespaces left by lab processes that no longer exist (and are empty)."""
    removed = []
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        owner = name[len(NS_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or int(owner) == os.getpid() or _pid_alive(int(owner)):
            continue
        if _namespace_pids(name):
            continue
        run(["ip", "netns", "del", name], check=False)
        if not Path("/run/netns", name).exists():
            removed.append(name)
    return removed


class Process:
    """A process started in a lab namespace, in its own process group, output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], popen: subprocess.Popen[bytes], log: Path):
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log_path = log
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            if self.wait(grace) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.wait(grace)
        # The leader may be gone while members of its group live on.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.poll()


class Namespace:
    """Command helpers for one named network namespace."""

    def __init__(self, name: str, owner: Lab):
        self.name = name
        self._owner = owner

    def ns_exec(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait for it."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"[{self.name}] {' '.join(argv)} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start ``argv`` inside the namespace, stdout and stderr to ``log_path``."""
        return self._owner._spawn(self.name, argv, log_path, name=name, env=env)

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])

    def udp_ports_bound(self) -> set[int]:
        """UDP ports with a bound socket in this namespace (from ``ss -uln``)."""
        out = self.ns_exec(["ss", "-H", "-u", "-l", "-n"], check=False).stdout
        ports = set()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                port = fields[3].rsplit(":", 1)[-1]
                if port.isdigit():
                    ports.add(int(port))
        return ports

    def wait_udp_ports(
        self, ports: Sequence[int], timeout: float, *, watch: Process | None = None
    ) -> None:
        """Wait until every port in ``ports`` is bound; fail early if ``watch`` exits."""
        deadline = time.monotonic() + timeout
        missing = set(ports)
        while time.monotonic() < deadline:
            missing = set(ports) - self.udp_ports_bound()
            if not missing:
                return
            if watch is not None and not watch.alive():
                raise LabError(f"{watch.name} exited ({watch.returncode}) before binding UDP ports")
            time.sleep(0.1)
        raise LabError(f"UDP ports {sorted(missing)} not bound after {timeout:.0f} s")


class Host(Namespace):
    """A second machine on the lab network: its own namespace, ``eth0`` on a veth to the bridge."""

    def __init__(self, name: str, owner: Lab, address: ipaddress.IPv4Interface, bridge_port: str):
        super().__init__(name, owner)
        self.address = address
        self.bridge_port = bridge_port
        self.interface = "eth0"

    def mac(self) -> str:
        """The MAC address of the host's ``eth0``."""
        out = self.ip("-o", "link", "show", self.interface)
        return out.split("link/ether ", 1)[1].split()[0]


class Lab(Namespace):
    """A fresh namespace with ``lo`` up and a bridge holding the server address.

    ``with Lab(workdir) as lab:`` gives the namespace; :meth:`add_tap` makes a port for a VM,
    :meth:`add_host` a second host, :meth:`spawn` starts tracked processes in it. With
    ``carrier=False`` the bridge stays without carrier until the first VM or host is attached.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        subnet: str = "10.99.0.0/24",
        bridge: str = "br0",
        carrier: bool = True,
    ):
        _load_libc()
        self.network = ipaddress.IPv4Network(subnet)
        self.server = ipaddress.IPv4Interface(
            f"{self.network.network_address + 1}/{self.network.prefixlen}"
        )
        self.bridge = bridge
        self.carrier = carrier
        self.workdir = workdir
        super().__init__(f"{NS_PREFIX}{os.getpid()}-{next(_counter)}", self)
        self._namespaces: list[str] = []
        self._processes: list[Process] = []
        self._taps: list[str] = []
        self._hosts: list[Host] = []
        self._next_host_ip = 2

    @property
    def server_ip(self) -> str:
        return str(self.server.ip)

    def dhcp_range(self, first: int = 100, last: int = 200) -> tuple[str, str]:
        base = self.network.network_address
        return str(base + first), str(base + last)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        sweep_stale_namespaces()
        self.workdir.mkdir(parents=True, exist_ok=True)
        run(["ip", "netns", "add", self.name])
        self._namespaces.append(self.name)
        self.ip("link", "set", "lo", "up")
        self.ip(
            "link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"
        )
        self.ip("addr", "add", str(self.server), "dev", self.bridge)
        self.ip("link", "set", self.bridge, "up")
        if self.carrier:
            # A bridge has no carrier until a port is up, and a tap only gets one once QEMU
            # opens it; some servers refuse an interface without carrier. A veth pair with
            # one end on the bridge gives it carrier from the start, like a switch with a
            # cable in it.
            self.ip("link", "add", "carrier0", "type", "veth", "peer", "name", "carrier1")
            self.ns_exec(["sysctl", "-q", "-w", "net.ipv6.conf.carrier1.disable_ipv6=1"])
            self.ip("link", "set", "carrier0", "master", self.bridge, "up")
            self.ip("link", "set", "carrier1", "up")

    def close(self) -> None:
        """Stop all processes, delete links and namespaces. Safe to call more than once."""
        # Ctrl-C pressed again during cleanup must not leave half of the lab behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _is_main_thread() else None
        try:
            for proc in reversed(self._processes):
                proc.stop()
            self._processes.clear()
            for ns in reversed(self._namespaces):
                for pid in _namespace_pids(ns):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for host in self._hosts:
                run(["ip", "-n", self.name, "link", "del", host.bridge_port], check=False)
            for tap in self._taps:
                run(["ip", "-n", self.name, "link", "del", tap], check=False)
            if self.name in self._namespaces:
                for link in ("carrier0", self.bridge):
                    run(["ip", "-n", self.name, "link", "del", link], check=False)
            for ns in reversed(self._namespaces):
                for _ in range(20):
                    run(["ip", "netns", "del", ns], check=False)
                    if not Path("/run/netns", ns).exists():
                        break
                    time.sleep(0.1)
            self._namespaces.clear()
            self._taps.clear()
            self._hosts.clear()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    # -- building the network ----------------------------------------------------------------

    def add_tap(self) -> str:
        """Create ``tapN`` on the bridge, for a VM to open (``-netdev tap,ifname=...``)."""
        tap = f"tap{len(self._taps)}"
        self.ip("tuntap", "add", "dev", tap, "mode", "tap")
        self._taps.append(tap)
        self.ip("link", "set", tap, "master", self.bridge, "up")
        return tap

    def add_host(self, label: str | None = None, address: str | None = None) -> Host:
        """A second host: namespace ``<lab>-<label>``, its ``eth0`` joined to the bridge."""
        index = len(self._hosts) + 1
        label = label or f"h{index}"
        if address is None:
            address = (
                f"{self.network.network_address + self._next_host_ip}/{self.network.prefixlen}"
            )
            self._next_host_ip += 1
        iface = ipaddress.IPv4Interface(address)
        ns = f"{self.name}-{label}"
        port = f"veth{index}"
        run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        host = Host(ns, self, iface, port)
        self.ip("link", "add", port, "type", "veth", "peer", "name", host.interface, "netns", ns)
        self._hosts.append(host)
        self.ip("link", "set", port, "master", self.bridge, "up")
        host.ip("link", "set", "lo", "up")
        host.ip("addr", "add", str(iface), "dev", host.interface)
        host.ip("link", "set", host.interface, "up")
        return host

    def add_segment(self, router: Host, label: str, router_address: str) -> Host:
        """A host on a network of its own behind ``router`` (a relay agent, say).

        A veth pair joins the new namespace ``<lab>-<label>`` (its ``eth0``, no address) to
        ``router``, whose end gets ``router_address`` (``10.0.5.1/24``). The host's ``address``
        is that router address (the host has none until DHCP gives it one); the router's end
        is its ``bridge_port``. Both go away with the namespaces.
        """
        index = len(self._namespaces)
        ns = f"{self.name}-{label}"
        port = f"down{index}"
        run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        host = Host(ns, self, ipaddress.IPv4Interface(router_address), port)
        router.ip("link", "add", port, "type", "veth", "peer", "name", host.interface, "netns", ns)
        router.ip("addr", "add", router_address, "dev", port)
        router.ip("link", "set", port, "up")
        host.ip("link", "set", "lo", "up")
        host.ip("link", "set", host.interface, "up")
        return host

    # -- processes ---------------------------------------------------------------------------

    def _spawn(
        self,
        ns: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        name: str | None,
        env: Mapping[str, str] | None,
    ) -> Process:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        proc = Process(name or Path(argv[0]).name, argv, popen, log_path)
        self._processes.append(proc)
        return proc


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
