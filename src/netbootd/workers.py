"""DHCP worker processes: starting them, hearing from them, and ending with them.

With ``dhcp-workers = N``, the netbootd process that an operator starts is worker 0: it serves
DHCP for its share of the clients (see :mod:`netbootd.services.dhcp.shares`), and TFTP, HTTP and
port 4011 for all. It starts workers 1 to N-1, one after the other, each the same program with
the same arguments and ``--dhcp-worker I``: the kernel numbers the sockets of port 67's group in
the order they bind, and a worker's number must be its place there. Each worker tells worker 0,
over a pipe, when it is ready and what it learns of each client (its firmware, its address),
which the per-machine files that worker 0 serves over HTTP and TFTP are made with. Every
:data:`REPORT_INTERVAL` seconds each worker also sends its totals for the metrics (a
:class:`~netbootd.services.metrics.WorkerReport`), which worker 0 adds to its own at
``/metrics``. Once serving, a worker writes to its pipe without blocking: what the pipe cannot
take at once waits in memory, and a report that finds the one before still waiting is skipped
(the next one carries the same totals, and more).

A worker that ends on its own takes the server down with it (its clients would get no answer
from anyone): worker 0 logs why and stops. Worker 0 ending ends the workers too: each asks the
kernel for SIGKILL when its parent dies, so none is left holding a share of port 67.
Signals: SIGTERM and SIGINT to worker 0 stop the workers first; SIGUSR1 reaches them too, and
each logs its own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.boot.client import ClientInfo
from netbootd.config import Config
from netbootd.logs.events import format_event
from netbootd.services.metrics import WorkerReport

log = logging.getLogger("netbootd")

WORKER_FD_ENV = "NETBOOTD_WORKER_FD"  # the pipe a worker writes to, by file descriptor
CONFIG_DIGEST_ENV = "NETBOOTD_CONFIG_DIGEST"  # worker 0's configuration, as config_digest
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"  # systemd's, for the process it started (sd_notify(3))
READY_TIMEOUT = 30.0  # seconds a worker may take from start to ready
STOP_TIMEOUT = 10.0  # seconds workers have to stop before they are killed
_PR_SET_PDEATHSIG = 1
_LENGTH = 4  # octets of each message's length prefix
REPORT_INTERVAL = 1.0  # seconds between two reports of a worker's totals for the metrics

Remember = Callable[[ClientInfo, IPv4Address | None], None]


class WorkerError(Exception):
    """A worker did not start, or ended while serving; the message is for the operator."""


def config_digest(config: Config) -> str:
    """A digest of a validated configuration: workers read the same arguments and file as
    worker 0, and must have come to the same configuration (the file may have changed)."""
    return hashlib.sha256(repr(config).encode()).hexdigest()


# -- in a worker --------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Ask for SIGKILL when the process that started this one ends (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent ended before we asked


class WorkerLink:
    """A worker's side of its pipe to worker 0."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pipe: asyncio.WriteTransport | None = None  # once connect() has run
        self.reports_skipped = 0

    @classmethod
    def from_environment(cls, config: Config) -> WorkerLink:
        """The link worker 0 set up; WorkerError if there is none, or if this worker's
        configuration is not worker 0's."""
        raw = os.environ.get(WORKER_FD_ENV, "")
        if not raw.isdigit():
            raise WorkerError(f"a DHCP worker is started by netbootd itself ({WORKER_FD_ENV})")
        if os.environ.get(CONFIG_DIGEST_ENV) != config_digest(config):
            raise WorkerError(
                "the configuration changed while the DHCP workers started; start netbootd again"
            )
        return cls(int(raw))

    async def connect(self) -> None:
        """Write through the event loop from now on: never blocking, the rest kept until the
        pipe takes it."""
        loop = asyncio.get_running_loop()
        self._pipe, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, os.fdopen(self._fd, "wb", buffering=0)
        )

    def _send(self, message: tuple[object, ...]) -> None:
        data = pickle.dumps(message)
        framed = len(data).to_bytes(_LENGTH, "big") + data
        if self._pipe is not None:
            if not self._pipe.is_closing():  # worker 0 gone: this worker is being killed
                self._pipe.write(framed)
            return
        # Before connect(): one write per message on the blocking pipe, which takes it whole.
        os.write(self._fd, framed)

    def ready(self) -> None:
        self._send(("ready",))

    def remembered(self, client: ClientInfo, address: IPv4Address | None) -> None:
        self._send(("remember", client, address))

    def report(self, report: WorkerReport) -> None:
        """Send this worker's totals, unless the last report is still waiting for the pipe."""
        if self._pipe is not None and self._pipe.get_write_buffer_size() > 0:
            self.reports_skipped += 1
            return
        self._send(("report", report))

    async def report_every(
        self, make: Callable[[], WorkerReport], interval: float = REPORT_INTERVAL
    ) -> None:
        """Report what ``make`` gives every ``interval`` seconds, for ever."""
        while True:
            await asyncio.sleep(interval)
            self.report(make())


# -- in worker 0 --------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    listening: asyncio.Task[None] | None = None


class Workers:
    """Workers 1 to ``count`` - 1, started by worker 0 with ``argv`` (its own arguments)."""

    def __init__(self, argv: Sequence[str], config: Config, remember: Remember | None) -> None:
        self._argv = list(argv)
        self._count = config.dhcp_workers
        self._digest = config_digest(config)
        self._remember = remember
        self._workers: list[_Worker] = []
        self._reports: dict[int, WorkerReport] = {}
        self._stopping = False
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Start each worker and wait until it is ready before the next; WorkerError if one
        is not."""
        for index in range(1, self._count):
            worker = await self._spawn(index)
            self._workers.append(worker)
            try:
                message = await asyncio.wait_for(self._receive(worker), READY_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, EOFError) as exc:
                code = worker.process.returncode
                how = f"exited with status {code}" if code is not None else "was not ready"
                raise WorkerError(
                    f"DHCP worker {index} {how} (its log lines are above)"
                    f"{': timed out' if isinstance(exc, TimeoutError) else ''}"
                ) from exc
            if message != ("ready",):
                raise WorkerError(f"DHCP worker {index} said {message!r} first, not ready")
            worker.listening = asyncio.get_running_loop().create_task(self._listen(worker))
        log.info(format_event("dhcp-workers", workers=self._count))

    async def _spawn(self, index: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "netbootd",
                *self._argv,
                "--dhcp-worker",
                str(index),
                pass_fds=(write_fd,),
                env=self._environment(write_fd),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        return _Worker(index, process, reader)

    def _environment(self, write_fd: int) -> dict[str, str]:
        """Worker 0's environment, with the worker's pipe and digest, without systemd's
        notification socket: only worker 0, the process systemd started, notifies."""
        env = {key: value for key, value in os.environ.items() if key != NOTIFY_SOCKET_ENV}
        return env | {WORKER_FD_ENV: str(write_fd), CONFIG_DIGEST_ENV: self._digest}

    @staticmethod
    async def _receive(worker: _Worker) -> tuple[object, ...]:
        size = int.from_bytes(await worker.reader.readexactly(_LENGTH), "big")
        message = pickle.loads(await worker.reader.readexactly(size))  # noqa: S301 (our child)
        if not isinstance(message, tuple):
            raise EOFError(f"DHCP worker {worker.index} sent {message!r}")
        return message

    async def _listen(self, worker: _Worker) -> None:
        """What a worker learns, until its pipe closes: then it has ended."""
        try:
            while True:
                message = await self._receive(worker)
                if message[0] == "remember" and self._remember is not None:
                    _, client, address = message
                    assert isinstance(client, ClientInfo)
                    assert address is None or isinstance(address, IPv4Address)
                    self._remember(client, address)
                elif message[0] == "report" and isinstance(message[1], WorkerReport):
                    self._reports[worker.index] = message[1]
        except (asyncio.IncompleteReadError, EOFError):
            pass
        status = await worker.process.wait()
        if not self._stopping and not self.ended.done():
            self.ended.set_result(f"DHCP worker {worker.index} ended (status {status})")

    def reports(self) -> list[WorkerReport]:
        """Each worker's latest report, in the order of the workers."""
        return [self._reports[index] for index in sorted(self._reports)]

    def signal(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after STOP_TIMEOUT."""
        self._stopping = True
        self.signal(signal.SIGTERM)
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning(format_event("dhcp-worker-killed", worker=worker.index))
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            if worker.listening is not None:
                worker.listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.listening
