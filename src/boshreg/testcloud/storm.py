"""A boot storm: many VMs booting at once, each reading its settings as the agent does.

One real ``boshreg serve`` (SQLite), one metadata emulator in a process of its own (under uvicorn), and agent
processes: by default each boots its share of the VMs on an event loop (``storm_agent``: the agent's requests
and decoding, cheap enough that the registry, not the simulation, is what is measured); with
``agents="resolver"`` each runs the agent's own ``resolve()`` from many threads (its whole walk and verdict,
at about twice the CPU per VM). Each simulated VM connects from a loopback address of its own (127.64.0.1
onwards), because the metadata service tells VMs apart by the caller's address, as Nova's does behind
Neutron's proxy; and each reads the registry with its own per-VM credential, never the admin's. Every VM
must get exactly its own settings.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import uvloop

from boshreg.agent import HttpSource, ResolveError, resolve
from boshreg.bootstrap import userdata
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.cpi.credentials import per_vm_endpoint
from boshreg.cpi.delivery import render
from boshreg.registry.datadir import INSTANCE_SECRET_FILE
from boshreg.registry.server import bind
from boshreg.testcloud.boot import example_settings, running_registry
from boshreg.testcloud.metadata import MetadataApp, MetadataService
from boshreg.testcloud.storm_agent import BootFailed, boot
from boshreg.testcloud.storm_cpi import store_all
from boshreg.testcloud.vms import TestCloudError, TestVm, default_meta_data

MAX_VMS = 100_000
LEAN = "lean"  # the agent's requests and decoding on an event loop per process (storm_agent)
RESOLVER = "resolver"  # the agent's own resolve() in threads: its whole walk and verdict, twice the CPU
AGENTS = (LEAN, RESOLVER)
CPI_WRITERS = 16
PROGRESS_SECONDS = 0.5
# Threads in one resolver process beyond this lose more to the interpreter lock than they add: 10,000 VMs at
# 256 at a time took 19.7-20.6 s in 2 processes, 14.7-15.9 s in 4 and 16.3-17.3 s in 8 (2 cores).
THREADS_PER_RESOLVER = 64
SHARE_SECONDS = 0.1  # how often a resolver process adds its boots to the shared count
_SPAWN = multiprocessing.get_context("spawn")  # no fork of a process that already runs threads
_ERRORS_KEPT = 5


@dataclass(frozen=True)
class VmBoot:
    """One simulated VM's resolve: how long it took, where the time went, and whether it was right."""

    name: str
    seconds: float
    source_seconds: float
    registry_seconds: float
    started: float  # wall clock (time.time), comparable across the agent processes
    ended: float
    matched: bool
    error: str | None = None


@dataclass
class StormReport:
    """The storm's figures: every VM accounted for, latencies per VM, the whole storm's duration."""

    vms: int
    concurrency: int
    agents: str
    processes: int
    cpi_seconds: float
    seconds: float
    registry_cpu_cpi: float  # CPU seconds the registry's processes used while the CPI stored the settings
    registry_cpu_boot: float  # ... and while the VMs booted (the rest of the machine ran the simulation)
    resolved: int
    wrong: int
    failed: int
    per_vm_ms: dict[str, float] = field(default_factory=dict)
    source_ms: dict[str, float] = field(default_factory=dict)
    registry_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.resolved == self.vms and self.wrong == 0 and self.failed == 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def to_text(self) -> str:
        def spread(figures: dict[str, float]) -> str:
            return ", ".join(f"{name} {value:,.1f} ms" for name, value in figures.items())

        lines = [
            f"{self.vms:,} VMs, {self.concurrency} booting at a time ({self.processes} {self.agents} agent processes)",
            f"CPI:      {self.vms:,} settings stored in {self.cpi_seconds:.1f} s",
            f"storm:    {self.resolved:,} resolved, {self.wrong} with wrong settings, {self.failed} failed, "
            f"in {self.seconds:.1f} s ({self.vms / self.seconds if self.seconds else 0:,.0f} VMs/s)",
            f"cpu:      the registry's own {self.registry_cpu_cpi:.1f} s while the CPI stored, "
            f"{self.registry_cpu_boot:.1f} s during the boots ({os.cpu_count() or 1} cores, shared with the agents)",
            f"per VM:   {spread(self.per_vm_ms)}",
            f"metadata: {spread(self.source_ms)}",
            f"registry: {spread(self.registry_ms)}",
        ]
        lines += [f"error:    {error}" for error in self.errors]
        return "\n".join(lines)


def agent_processes(agents: str, concurrency: int) -> int:
    """One agent process per core; resolvers at least one per ``THREADS_PER_RESOLVER`` VMs booting at once."""
    cores = os.cpu_count() or 1
    return max(cores, math.ceil(concurrency / THREADS_PER_RESOLVER)) if agents == RESOLVER else cores


def vm_address(index: int) -> str:
    """VM ``index``'s own loopback address: 127.64.0.1 onwards, never a .0 or .255."""
    block, host = divmod(index, 254)
    return f"127.{64 + block // 256}.{block % 256}.{host + 1}"


def vm_name(index: int) -> str:
    return f"vm-storm-{index:06d}"


def storm(
    work_dir: Path,
    *,
    vms: int,
    concurrency: int,
    agents: str = LEAN,
    processes: int | None = None,
    deadline: float = 60.0,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
    kept: bool = True,
) -> StormReport:
    """Boot ``vms`` VMs, ``concurrency`` at a time; everything started is stopped before it returns.

    ``progress(phase, done, total)`` is told twice a second how far the CPI's writes and the boots are;
    ``kept``: ``work_dir`` outlives the run (else its paths are not printed).
    """
    if not 1 <= vms <= MAX_VMS:
        raise TestCloudError(f"--vms {vms}: give between 1 and {MAX_VMS:,}")
    if not 1 <= concurrency <= 4096:
        raise TestCloudError(f"--concurrency {concurrency}: give between 1 and 4096")
    if agents not in AGENTS:
        raise TestCloudError(f"--agents {agents}: give {' or '.join(AGENTS)}")
    _check_loopback_range()
    processes = max(1, min(processes or agent_processes(agents, concurrency), concurrency))
    names = [vm_name(i) for i in range(vms)]
    with running_registry(work_dir, say, kept=kept) as registry:
        secret = (registry.data_dir / INSTANCE_SECRET_FILE).read_text().strip()
        say(f"2. CPI       storing the settings of {vms:,} VMs ({CPI_WRITERS} writers) ...")
        started, cpu_before = time.monotonic(), registry.cpu_seconds()
        stored = _Counter()
        with _Reporting(progress, "stored", stored, vms):
            _store_all(registry.endpoint, names, stored)
        cpi_seconds = time.monotonic() - started
        cpu_stored = registry.cpu_seconds()
        cloud = [_vm(i, name, per_vm_endpoint(registry.endpoint, name, secret=secret)) for i, name in enumerate(names)]
        with _MetadataProcess(cloud) as metadata_url:
            say(f"3. nova      metadata service {metadata_url} for {vms:,} VMs, each known by its own address")
            say(f"4. agents    {vms:,} VMs boot, {concurrency} at a time, in {processes} {agents} processes ...")
            booted = _Counter(_SPAWN.Value("q", 0))
            cpu_before_boots = registry.cpu_seconds()
            with _Reporting(progress, "booted", booted, vms):
                boots = _boot_all(names, metadata_url, agents, concurrency, processes, deadline, booted)
            registry_cpu = (cpu_stored - cpu_before, registry.cpu_seconds() - cpu_before_boots)
    return _report(boots, vms, concurrency, agents, processes, cpi_seconds, registry_cpu)


def _vm(index: int, name: str, endpoint: Endpoint) -> TestVm:
    """VM ``index`` as nova holds it: registry user data with its own credential, known by its own address."""
    user_data = userdata.encode(render(name, endpoint=endpoint).user_data)
    return TestVm(name, user_data, default_meta_data(name), vm_address(index))


def _check_loopback_range() -> None:
    """The storm needs the whole of 127.0.0.0/8 on loopback, as Linux has it."""
    with socket.socket() as probe:
        try:
            probe.bind((vm_address(0), 0))
        except OSError as exc:
            raise TestCloudError(
                f"cannot use {vm_address(0)} as a VM's address ({exc.strerror}); the storm needs the whole of "
                "127.0.0.0/8 on the loopback interface, as Linux has it"
            ) from None


def _store_all(endpoint: Endpoint, names: Sequence[str], stored: _Counter) -> None:
    """PUT every VM's settings with the admin credential, as the CPI does before creating the servers."""
    documents = ((name, json.dumps(example_settings(name))) for name in names)
    store_all(endpoint, documents, CPI_WRITERS, stored.add)


class _Counter:
    """A count shared by threads, or by processes when given a shared value (the resolvers' boots).

    Across processes the count is added to the shared value at most every ``SHARE_SECONDS`` (and by
    ``publish``): its lock taken by every boot of 256 threads in two processes was a tenth of a resolver's time.
    """

    def __init__(self, shared: Any = None) -> None:
        self.shared = shared
        self._lock = threading.Lock()
        self._count = 0
        self._unshared = 0
        self._shared_at = 0.0

    def add(self) -> None:
        with self._lock:
            self._count += 1
            if self.shared is None:
                return
            self._unshared += 1
            now = time.monotonic()
            if now - self._shared_at < SHARE_SECONDS:
                return
            self._shared_at = now
        self.publish()

    def publish(self) -> None:
        """Add what this process counted since it last did to the shared value."""
        with self._lock:
            pending, self._unshared = self._unshared, 0
        if pending and self.shared is not None:
            with self.shared.get_lock():
                self.shared.value += pending

    @property
    def value(self) -> int:
        return int(self.shared.value) if self.shared is not None else self._count


class _Reporting:
    """Tells ``progress`` the count twice a second while the block runs, and once more at its end."""

    def __init__(self, progress: Callable[[str, int, int], None] | None, phase: str, count: _Counter, total: int):
        self.progress, self.phase, self.count, self.total = progress, phase, count, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storm-progress", daemon=True)

    def __enter__(self) -> _Reporting:
        if self.progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            self.progress(self.phase, self.count.value, self.total)

    def _run(self) -> None:
        assert self.progress is not None
        while not self._stop.wait(PROGRESS_SECONDS):
            self.progress(self.phase, self.count.value, self.total)


class _MetadataProcess:
    """The metadata emulator in a process of its own, so that the resolvers do not share its interpreter."""

    def __init__(self, vms: list[TestVm]) -> None:
        self._ports: Queue[int] = _SPAWN.Queue()
        self._process = _SPAWN.Process(target=_serve_metadata, args=(vms, self._ports), daemon=True)

    def __enter__(self) -> str:
        self._process.start()
        try:
            port = self._ports.get(timeout=60)
        except Exception:
            self._process.kill()
            raise TestCloudError("the metadata emulator did not start within 60 s") from None
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_exc: object) -> None:
        self._process.terminate()
        self._process.join(timeout=10)


def _serve_metadata(vms: list[TestVm], ports: Queue[int]) -> None:
    """The emulator's answers under uvicorn: a thread per connection costs more than the registry itself.

    On uvloop, and without uvicorn's proxy-headers middleware: each VM is known by its own socket address (a VM
    sending X-Forwarded-For must not be answered as another), and the middleware was ~7% of the emulator's time.
    """
    import uvicorn  # not in `serve` (test_structure)

    listening = bind("127.0.0.1", 0)
    ports.put(listening.port)
    config = uvicorn.Config(
        MetadataApp(MetadataService(vms)),
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
    uvicorn.Server(config).run(sockets=[listening.sock])


def _boot_all(
    names: list[str],
    metadata_url: str,
    agents: str,
    concurrency: int,
    processes: int,
    deadline: float,
    booted: _Counter,
) -> list[VmBoot]:
    at_once = math.ceil(concurrency / processes)
    shares = [[(i, names[i]) for i in range(p, len(names), processes)] for p in range(processes)]
    share_booter = _boot_share_on_loop if agents == LEAN else _boot_share_in_threads
    with ProcessPoolExecutor(
        processes, mp_context=_SPAWN, initializer=_count_boots_in, initargs=(booted.shared,)
    ) as pool:
        list(pool.map(_warm_up, range(processes)))  # every process started and imported before the clock runs
        chunks = pool.map(
            share_booter, shares, [metadata_url] * processes, [at_once] * processes, [deadline] * processes
        )
        return [boot for chunk in chunks for boot in chunk]


_BOOTED: _Counter | None = None  # in a resolver process: the count of boots, shared with the parent


def _count_boots_in(shared: Any) -> None:
    global _BOOTED
    _BOOTED = _Counter(shared)


def _warm_up(_n: int) -> None:
    time.sleep(0.2)  # long enough that each warm-up lands in a process of its own


def _boot_share_on_loop(share: list[tuple[int, str]], metadata_url: str, at_once: int, deadline: float) -> list[VmBoot]:
    """One agent process: its share of the VMs on an event loop, ``at_once`` booting at a time.

    On uvloop, as the registry serves: the simulation's own cost per VM is what stands between the storm and
    the registry it measures (see ``_serve_metadata``)."""
    boots = uvloop.run(_boot_on_loop(share, metadata_url, at_once, deadline))
    if _BOOTED is not None:
        _BOOTED.publish()
    return boots


async def _boot_on_loop(share: list[tuple[int, str]], metadata_url: str, at_once: int, deadline: float) -> list[VmBoot]:
    waiting = iter(share)
    boots: list[VmBoot] = []

    async def booter() -> None:
        for index, name in waiting:  # one iterator shared by every booter: each VM boots once
            boots.append(await _boot_one_on_loop(index, name, metadata_url, deadline))

    await asyncio.gather(*(booter() for _ in range(min(at_once, len(share)))))
    return boots


async def _boot_one_on_loop(index: int, name: str, metadata_url: str, deadline: float) -> VmBoot:
    started_wall, started = time.time(), time.monotonic()
    try:
        booted = await boot(metadata_url, vm_address(index), deadline)
    except BootFailed as exc:
        seconds = time.monotonic() - started
        return _counted(VmBoot(name, seconds, 0.0, 0.0, started_wall, started_wall + seconds, False, str(exc)))
    seconds = time.monotonic() - started
    matched = booted.settings == example_settings(name)
    boot_figures = (booted.source_seconds, booted.registry_seconds)
    return _counted(VmBoot(name, seconds, *boot_figures, started_wall, started_wall + seconds, matched))


def _counted(boot: VmBoot) -> VmBoot:
    if _BOOTED is not None:
        _BOOTED.add()
    return boot


def _boot_share_in_threads(
    share: list[tuple[int, str]], metadata_url: str, threads: int, deadline: float
) -> list[VmBoot]:
    """One resolver process: its share of the VMs, ``threads`` running the agent's ``resolve()`` at a time."""
    with ThreadPoolExecutor(threads) as pool:
        boots = list(pool.map(lambda vm: _boot_one(vm[0], vm[1], metadata_url, deadline), share))
    if _BOOTED is not None:
        _BOOTED.publish()
    return boots


def _boot_one(index: int, name: str, metadata_url: str, deadline: float) -> VmBoot:
    address = vm_address(index)
    started_wall, started = time.time(), time.monotonic()
    error: str | None = None
    try:
        resolution = resolve(
            [HttpSource(metadata_url, source_address=address)],
            deadline=deadline,
            source_address=address,
        )
    except ResolveError as exc:
        trace, error, matched = exc.trace, str(exc), False
    else:
        trace, matched = resolution.trace, resolution.settings == example_settings(name)
    seconds = time.monotonic() - started
    step_seconds = {step.step: step.seconds for step in trace.steps}
    figures = (step_seconds.get("source", 0.0), step_seconds.get("registry", 0.0))
    return _counted(VmBoot(name, seconds, *figures, started_wall, started_wall + seconds, matched, error))


def _report(
    boots: list[VmBoot],
    vms: int,
    concurrency: int,
    agents: str,
    processes: int,
    cpi_seconds: float,
    registry_cpu: tuple[float, float],
) -> StormReport:
    resolved = [boot for boot in boots if boot.error is None]
    return StormReport(
        vms=vms,
        concurrency=concurrency,
        agents=agents,
        processes=processes,
        cpi_seconds=round(cpi_seconds, 3),
        registry_cpu_cpi=round(registry_cpu[0], 3),
        registry_cpu_boot=round(registry_cpu[1], 3),
        seconds=round(max(b.ended for b in boots) - min(b.started for b in boots), 3) if boots else 0.0,
        resolved=len(resolved),
        wrong=sum(not boot.matched for boot in resolved),
        failed=len(boots) - len(resolved),
        per_vm_ms=percentiles([boot.seconds for boot in boots]),
        source_ms=percentiles([boot.source_seconds for boot in boots]),
        registry_ms=percentiles([boot.registry_seconds for boot in resolved]),
        errors=[f"{boot.name}: {boot.error}" for boot in boots if boot.error][:_ERRORS_KEPT],
    )


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99, p99.9 and max of durations, in milliseconds (nearest-rank)."""
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] * 1000

    return {"p50": round(rank(50), 2), "p99": round(rank(99), 2), "p99.9": round(rank(99.9), 2),
            "max": round(ordered[-1] * 1000, 2)}  # fmt: skip
