"""The whole chain of DESIGN.md on one machine: registry, CPI side, Nova's metadata, the agent.

``boot()`` starts a real ``boshreg serve`` (SQLite, loopback), stores a VM's settings as the CPI does,
renders the user data, serves it from the metadata emulator (or a config drive image), and resolves the
settings with the agent's resolver. The trace shows each hop; the settings must come back as stored.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from boshreg.agent import ResolveError, Trace, load_agent_config, resolve
from boshreg.agent.agent_json import retarget
from boshreg.bootstrap import userdata
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.cpi.delivery import Delivery, render
from boshreg.testcloud.configdrive import drive_files, write_iso
from boshreg.testcloud.metadata import MetadataServer
from boshreg.testcloud.ports import free_port
from boshreg.testcloud.vms import TestCloudError, TestVm, default_meta_data

REGISTRY_START_SECONDS = 30


@dataclass
class BootReport:
    """What happened at each hop, and whether the agent got what the CPI stored."""

    registry_url: str
    vm_name: str
    delivery: str
    registry_less: bool
    user_data_bytes: int
    drive: str | None
    trace: Trace
    settings_match: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.settings_match

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "registry": self.registry_url,
            "vm": self.vm_name,
            "delivery": self.delivery,
            "registry_less": self.registry_less,
            "user_data_bytes": self.user_data_bytes,
            "config_drive": self.drive,
            "settings_match": self.settings_match,
            "error": self.error,
            "trace": self.trace.to_json(),
        }


def example_settings(name: str) -> dict[str, Any]:
    """Agent settings shaped like the ones a director writes."""
    return {
        "agent_id": f"agent-{uuid.uuid5(uuid.NAMESPACE_DNS, name)}",
        "vm": {"name": name},
        "networks": {
            "default": {
                "type": "dynamic",
                "default": ["dns", "gateway"],
                "dns": ["10.0.0.2"],
                "cloud_properties": {"net_id": "6b5d3b8e-1c2f-4e6a-9d3b-7f1e2a4c5d6e"},
            }
        },
        "disks": {"system": "/dev/vda", "ephemeral": "/dev/vdb", "persistent": {}},
        "env": {"bosh": {"password": "*"}},
        "ntp": ["0.pool.ntp.org"],
        "blobstore": {"provider": "dav", "options": {"endpoint": "http://10.0.0.6:25250", "user": "agent"}},
        "mbus": "nats://nats:nats-password@10.0.0.6:4222",
    }


def boot(
    work_dir: Path,
    *,
    delivery: Delivery = Delivery.METADATA,
    registry_less: bool = False,
    deadline: float = 30.0,
    say: Callable[[str], None] = print,
    metadata_down: bool = False,
    kept: bool = True,
) -> BootReport:
    """Run the chain once; every process and socket it starts is stopped before it returns.

    ``metadata_down``: the metadata service does not answer (stopped before the agent runs), as on a
    cloud without one or a subnet without DHCP: what a VM fed by its drive then depends on. ``kept``: the
    work directory outlives the run (else its paths are not printed: they would be gone).
    """
    if delivery is Delivery.LEGACY:
        raise TestCloudError(
            "boot runs metadata or config-drive delivery; inspect legacy requests with `boshreg inspect`"
        )
    name = f"vm-{uuid.uuid4()}"
    settings = example_settings(name)
    with running_registry(work_dir, say, kept=kept) as registry:
        registry_url, endpoint = registry.url, registry.endpoint
        if not registry_less:
            from boshreg.client import RegistryClient  # httpx: not in `serve` (test_structure)

            with RegistryClient(endpoint) as client:
                client.put_settings(name, json.dumps(settings))
            say(f"2. CPI       PUT /instances/{name}/settings ({len(json.dumps(settings))} bytes)")
        bootstrap = render(
            name,
            endpoint=None if registry_less else endpoint,
            settings=settings if registry_less else None,
            delivery=delivery,
        )
        raw = userdata.encode(bootstrap.user_data)
        mode = "registry-less" if registry_less else "registry"
        say(f"   CPI       {mode} user data, {len(raw)} bytes, {delivery.value} delivery")
        vm = TestVm(name, raw, default_meta_data(name))
        drive: Path | None = None
        metadata = MetadataServer("127.0.0.1", 0, [vm]).start()
        if metadata_down:
            metadata.stop()  # its port stays known and now refuses: nothing answers there
        try:
            # The stemcell's own order (File, ConfigDrive, HTTP), pointed at this test cloud: never at this
            # machine's own drive or metadata service.
            if delivery is Delivery.CONFIG_DRIVE:
                drive = write_iso(drive_files(vm), work_dir / "config-drive.iso")
                say(f"3. nova      config drive {drive} (label config-2); metadata service {metadata.url}")
            else:
                say(f"3. nova      metadata service {metadata.url} serving {name}; no config drive")
            if metadata_down:
                say(f"   nova      the metadata service at {metadata.url} is down")
            agent = retarget(
                load_agent_config(None),
                metadata_url=metadata.url,
                disk_paths=[str(drive or work_dir / "no-config-drive.iso")],
                settings_path=str(work_dir / "agent-bootstrap-env.json"),
            )
            sources = agent.sources
            say("4. agent     resolving its settings:")
            try:
                resolution = resolve(sources, deadline=deadline)
                trace, error = resolution.trace, None
                match = resolution.settings == settings
            except ResolveError as exc:
                trace, error, match = exc.trace, str(exc), False
        finally:
            if not metadata_down:
                metadata.stop()
    if error is None and not match:
        error = "the settings the agent got differ from what the CPI stored"
    return BootReport(
        registry_url, name, delivery.value, registry_less, len(raw), str(drive) if drive else None, trace, match, error
    )


@dataclass(frozen=True)
class LocalRegistry:
    """A running zero-config registry: its URL, the admin endpoint and its data directory."""

    url: str
    endpoint: Endpoint
    data_dir: Path
    pid: int  # the serving process; its workers are its children

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the registry's processes have used so far: the registry's own share."""
        total = 0.0
        try:
            parent = psutil.Process(self.pid)
            for process in (parent, *parent.children()):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass  # a process that just ended: what the others used still counts
        return total


@contextmanager
def running_registry(work_dir: Path, say: Callable[[str], None], *, kept: bool = True) -> Iterator[LocalRegistry]:
    """A real ``boshreg serve`` (SQLite in ``work_dir``) on a free loopback port, stopped on exit.

    ``kept``: ``work_dir`` stays after the run, so its paths are worth printing.
    """
    port = free_port()
    data_dir = work_dir / "registry"
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        log = (work_dir / "registry.log").open("wb")
    except OSError as exc:
        raise TestCloudError(f"--work-dir {work_dir}: {exc.strerror}; give a directory you can write") from None
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boshreg",
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(process, port, work_dir / "registry.log")
        password = (data_dir / "admin-password").read_text().strip()
        endpoint = Endpoint("http", "127.0.0.1", port, "admin", password)
        where = f"SQLite in {data_dir}, log {work_dir / 'registry.log'}" if kept else "SQLite; keep it with --work-dir"
        say(f"1. registry  boshreg serve at {url} ({where})")
        yield LocalRegistry(url, endpoint, data_dir, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _wait_until_up(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + REGISTRY_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TestCloudError(f"the registry exited with {process.returncode}; see {log}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TestCloudError(f"the registry did not listen within {REGISTRY_START_SECONDS} s; see {log}")
