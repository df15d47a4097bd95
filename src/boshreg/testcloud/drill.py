"""``boshreg testcloud drill``: the provider turns config drives off, on real network plumbing.

VMs are network namespaces on a bridge of their own (``netlab``); the registry listens on the bridge's
host address with unauthenticated reads checked against the Keystone/Nova stand-in (or per-VM
credentials); the metadata emulator listens on another host address and tells VMs apart by their
source address, as Nova's does. Each VM's agent runs inside its namespace with its own agent.json: the
OpenStack stemcell's sources, the ``HTTP`` one pointed at the emulator, the ``ConfigDrive`` one at the
VM's drive image.

Before anything boots, ``inspect`` predicts each VM's verdict from its create request. Phase 1 boots
every VM; phase 2 detaches every drive and boots again; phase 3 re-renders the user data metadata-only
and boots again. A prediction holds when ``portable`` VMs boot unchanged in phase 2, ``pinned`` ones
fail there or boot without what only the drive carried, ``broken`` ones fail in phase 1, the agent's own
verdict in phase 1 agrees, and every VM boots in phase 3.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boshreg.bootstrap import nova, userdata
from boshreg.bootstrap.credentials import generate_secret, instance_token
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.bootstrap.verdict import Word
from boshreg.cpi.inspect import inspect_request
from boshreg.registry.audit import query_events
from boshreg.registry.config import load_config
from boshreg.registry.engine import build_engine
from boshreg.testcloud.boot import example_settings
from boshreg.testcloud.configdrive import drive_files, write_iso
from boshreg.testcloud.metadata import MetadataFaults, MetadataServer
from boshreg.testcloud.netlab import DEFAULT_SUBNET, LabVm, NetLab, network_lab
from boshreg.testcloud.openstack import FakeServer, OpenStackStandIn
from boshreg.testcloud.ports import free_port
from boshreg.testcloud.vms import TestCloudError, TestVm, default_meta_data
from boshreg.why import diagnose, registry_side_from_database, vm_side_from_trace_document

LEGACY = "legacy"  # user_data and a personality copy holding the public key, config drive on
DRIVE = "config-drive"  # a config drive whose user data matches the metadata service's
METADATA = "metadata"  # no drive
CREATED_AS = (LEGACY, DRIVE, METADATA)
ADDRESS_CHECK = "address-check"
PER_VM = "per-vm"
MODES = (ADDRESS_CHECK, PER_VM)
PHASES = ("boot", "drives off", "metadata only")
WRONG_LABEL = "wrong-label"  # the drive is there, labelled otherwise: not a config drive to the agent
MISSING_FILE = "missing-file"  # the drive lacks ec2/latest/user-data
DRIVE_FAULTS = (WRONG_LABEL, MISSING_FILE)
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrill drill@director"
REGISTRY_START_SECONDS = 30
DEFAULT_AGENT_DEADLINE = 20.0


@dataclass
class PhaseResult:
    """One boot of one VM: did the agent get the settings the CPI stored, fed by what, losing what."""

    booted: bool
    verdict: str | None
    fed_by: str | None
    lost: list[str] = field(default_factory=list)
    error: str | None = None
    diagnosis: str | None = None
    trace: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        if not self.booted:
            return "failed"
        return "booted, lost " + ", ".join(self.lost) if self.lost else "booted"

    def to_json(self) -> dict[str, Any]:
        return {
            "booted": self.booted,
            "verdict": self.verdict,
            "fed_by": self.fed_by,
            "lost": self.lost,
            "error": self.error,
            "diagnosis": self.diagnosis,
        }


@dataclass
class DrillVm:
    """One VM of the drill: how it was created, what was predicted, and what each phase showed."""

    name: str
    address: str
    created_as: str
    predicted: str
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    reads_from: list[str] = field(default_factory=list)  # the registry's audit: addresses of phase 1's reads

    @property
    def agent_said(self) -> str | None:
        first = self.phases.get(PHASES[0])
        return first.verdict if first is not None else None

    @property
    def held(self) -> bool:
        boot, off, fixed = (self.phases.get(phase) for phase in PHASES)
        if boot is None or off is None or fixed is None:
            return False
        if self.predicted == Word.BROKEN:
            return not boot.booted
        agreed = boot.booted and self.agent_said == self.predicted and self.reads_from == [self.address]
        if self.predicted == Word.PORTABLE:
            return agreed and off.booted and not off.lost and fixed.booted
        return agreed and (not off.booted or bool(off.lost)) and fixed.booted

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "created_as": self.created_as,
            "predicted": self.predicted,
            "agent_said": self.agent_said,
            "reads_from": self.reads_from,
            "phases": {phase: result.to_json() for phase, result in self.phases.items()},
            "matched": self.held,
        }


@dataclass
class DrillReport:
    vms: list[DrillVm]
    mode: str
    subnet: str
    registry: str
    metadata: str
    seconds: float
    faults: list[str]

    @property
    def all_predictions_held(self) -> bool:
        return bool(self.vms) and all(vm.held for vm in self.vms)

    def to_json(self) -> dict[str, Any]:
        return {
            "all_predictions_held": self.all_predictions_held,
            "mode": self.mode,
            "subnet": self.subnet,
            "registry": self.registry,
            "metadata": self.metadata,
            "faults": self.faults,
            "seconds": round(self.seconds, 1),
            "vms": [vm.to_json() for vm in self.vms],
        }

    def to_text(self) -> str:
        header = ("VM", "address", "created as", "predicted", "agent", "boot", "drives off", "metadata only", "held")
        rows = [header] + [
            (
                vm.name,
                vm.address,
                vm.created_as,
                vm.predicted,
                vm.agent_said or "-",
                *(vm.phases[phase].summary() if phase in vm.phases else "-" for phase in PHASES),
                "yes" if vm.held else "NO",
            )
            for vm in self.vms
        ]
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                 for row in rows]  # fmt: skip
        for vm in self.vms:
            for phase, result in vm.phases.items():
                if result.diagnosis:
                    lines.append(f"{vm.name} ({phase}): {result.diagnosis}")
        verdict = "every prediction held" if self.all_predictions_held else "SOME PREDICTIONS DID NOT HOLD"
        lines.append(f"{verdict} ({len(self.vms)} VMs, {self.seconds:.1f} s, mode {self.mode})")
        return "\n".join(lines)


def drill(
    work_dir: Path,
    *,
    vms: int = 6,
    subnet: str = DEFAULT_SUBNET,
    mode: str = ADDRESS_CHECK,
    faults: MetadataFaults | None = None,
    deadline: float = DEFAULT_AGENT_DEADLINE,
    drive_fault: str | None = None,
    registry_late: float = 0.0,
    say: Callable[[str], None] = print,
) -> DrillReport:
    """Create VMs, predict, boot, turn drives off, boot, re-render, boot; everything made is removed."""
    if mode not in MODES:
        raise TestCloudError(f"--mode {mode!r}: use {' or '.join(MODES)}")
    if drive_fault not in (None, *DRIVE_FAULTS):
        raise TestCloudError(f"--drive-fault {drive_fault!r}: use {' or '.join(DRIVE_FAULTS)}")
    started = time.monotonic()
    names = [f"vm-{index + 1}" for index in range(vms)]
    kinds = [CREATED_AS[index * len(CREATED_AS) // vms] for index in range(vms)]
    work_dir.mkdir(parents=True, exist_ok=True)
    with network_lab(names, subnet) as lab:
        say(f"1. network   bridge {lab.bridge} ({lab.subnet}), no uplink; {vms} VMs as namespaces")
        servers = [FakeServer(vm.name, fixed=[vm.address]) for vm in lab.vms]
        cloud = OpenStackStandIn("bosh", secrets.token_urlsafe(16), "bosh", servers).start()
        try:
            with bridge_registry(lab, cloud, work_dir, mode) as registry:
                say(f"2. registry  {registry.url} ({mode}: anonymous reads checked against the Nova stand-in)"
                    if mode == ADDRESS_CHECK else f"2. registry  {registry.url} ({mode} credentials)")  # fmt: skip
                made = [
                    _create(vm, kind, registry.admin, registry.secret, work_dir, drive_fault)
                    for vm, kind in zip(lab.vms, kinds, strict=True)
                ]
                metadata = MetadataServer(lab.metadata_address, 0, [vm for vm, _ in made], faults=faults).start()
                try:
                    say(f"3. nova      metadata service {metadata.url}; drives for {sum(k != METADATA for k in kinds)}")
                    report = _phases(lab, made, kinds, metadata, work_dir, registry, deadline, registry_late, say)
                finally:
                    metadata.stop()
        finally:
            cloud.stop()
    said = (faults or MetadataFaults()).describe()
    said += [f"drive {drive_fault}"] if drive_fault else []
    said += [f"registry down for the first {registry_late:g} s"] if registry_late else []
    return DrillReport(report, mode, str(lab.subnet), registry.url, metadata.url, time.monotonic() - started, said)


def _phases(
    lab: NetLab,
    made: list[tuple[TestVm, dict[str, Any]]],
    kinds: list[str],
    metadata: MetadataServer,
    work_dir: Path,
    registry: BridgeRegistry,
    deadline: float,
    registry_late: float,
    say: Callable[[str], None],
) -> list[DrillVm]:
    drill_vms = [
        DrillVm(vm.name, lab_vm.address, kind, str(inspect_request(request).word))
        for (vm, request), lab_vm, kind in zip(made, lab.vms, kinds, strict=True)
    ]
    say("   predicted: " + ", ".join(f"{vm.name} {vm.predicted}" for vm in drill_vms))
    agent_json = {vm.name: _agent_json(vm, metadata.url, work_dir) for vm in lab.vms}
    config = registry.config
    for number, phase in enumerate(PHASES, start=4):
        if phase == PHASES[1]:
            for vm in lab.vms:  # the provider turns config drives off
                (work_dir / vm.name / "config-drive.iso").unlink(missing_ok=True)
        if phase == PHASES[2]:
            metadata.service.replace([_metadata_only(vm, request) for vm, request in made])
        say(f"{number}. {phase}: every VM boots")
        late = None
        if phase == PHASES[0] and registry_late:  # the registry is down while the VMs first boot
            registry.stop()
            late = threading.Timer(registry_late, registry.start)
            late.start()
        with ThreadPoolExecutor(max_workers=len(lab.vms)) as pool:
            results = list(pool.map(lambda vm: _boot(lab, vm, agent_json[vm.name], deadline), lab.vms))
        if late is not None:
            late.join()
        for drill_vm, result in zip(drill_vms, results, strict=True):
            if phase == PHASES[1] and result.booted:  # what the drive alone gave, gone with it
                result.lost = _lost(drill_vm.phases[PHASES[0]].trace, result.trace)
            if not result.booted:
                result.diagnosis = _why(config, drill_vm.name, result.trace)
            drill_vm.phases[phase] = result
        if phase == PHASES[0]:
            _audit(config, drill_vms)
    return drill_vms


def _create(
    vm: LabVm, kind: str, admin: Endpoint, secret: str | None, work_dir: Path, drive_fault: str | None = None
) -> tuple[TestVm, dict[str, Any]]:
    """Store the VM's settings as the CPI does and make its create request, Nova's view and its drive."""
    import httpx  # not in `serve` (test_structure)

    settings = example_settings(vm.name)
    response = httpx.put(  # never through a proxy from the environment: the bridge is ours alone
        admin.settings_url(vm.name),
        content=json.dumps(settings),
        auth=(admin.user or "", admin.password or ""),
        trust_env=False,
    )
    if response.status_code != 200:
        raise TestCloudError(f"the registry refused the settings of {vm.name}: {response.status_code}")
    endpoint = _vm_endpoint(admin, vm.name, secret)
    document = userdata.build_user_data(
        vm.name, endpoint, settings["networks"], None if kind == LEGACY else PUBLIC_KEY, anonymous=secret is None
    )
    raw = userdata.encode(document)
    server: dict[str, Any] = {
        "name": vm.name,
        "user_data": base64.b64encode(raw).decode(),
        "config_drive": kind != METADATA,
    }
    injected: dict[str, bytes] = {}
    if kind == LEGACY:  # the old CPI: the user data again as a file, here with the key only in that copy
        injected[nova.PERSONALITY_PATH] = userdata.encode({**document, "openssh": {"public_key": PUBLIC_KEY}})
        server["personality"] = [
            {"path": nova.PERSONALITY_PATH, "contents": base64.b64encode(injected[nova.PERSONALITY_PATH]).decode()}
        ]
    key = None if kind == LEGACY else PUBLIC_KEY  # key_name: the legacy VMs were made without one
    nova_vm = TestVm(vm.name, raw, default_meta_data(vm.name, key), vm.address, injected)
    (work_dir / vm.name).mkdir(exist_ok=True)
    if kind != METADATA:
        files = drive_files(nova_vm)
        if drive_fault == MISSING_FILE:
            files = {path: content for path, content in files.items() if path != nova.DRIVE_EC2_USER_DATA}
        label = "cidata" if drive_fault == WRONG_LABEL else nova.CONFIG_DRIVE_LABEL
        write_iso(files, work_dir / vm.name / "config-drive.iso", label=label)
    return nova_vm, {"server": server}


def _metadata_only(vm: TestVm, request: dict[str, Any]) -> TestVm:
    """The fix: the CPI re-renders the user data metadata-only, with the public key in the one copy."""
    document = userdata.decode(base64.b64decode(request["server"]["user_data"]), "user_data")
    document["openssh"] = {"public_key": PUBLIC_KEY}
    return TestVm(vm.name, userdata.encode(document), default_meta_data(vm.name, PUBLIC_KEY), vm.ip)


def _vm_endpoint(admin: Endpoint, name: str, secret: str | None) -> Endpoint:
    if secret is None:
        return Endpoint(admin.scheme, admin.host, admin.port)
    return Endpoint(admin.scheme, admin.host, admin.port, name, instance_token(secret, name))


def _agent_json(vm: LabVm, metadata_url: str, work_dir: Path) -> Path:
    """The stemcell's agent.json, its HTTP source at the emulator and its drive at the VM's image."""
    settings = json.loads(json.dumps(nova.OPENSTACK_STEMCELL_SETTINGS))
    for source in settings["Sources"]:
        if source["Type"] == "File":
            source["SettingsPath"] = str(work_dir / vm.name / "agent-bootstrap-env.json")
        elif source["Type"] == "ConfigDrive":
            source["DiskPaths"] = [str(work_dir / vm.name / "config-drive.iso")]
        elif source["Type"] == "HTTP":
            source["URI"] = metadata_url
    path = work_dir / vm.name / "agent.json"
    path.write_text(json.dumps({"Infrastructure": {"Settings": settings}}, indent=2))
    return path


def _boot(lab: NetLab, vm: LabVm, agent_json: Path, deadline: float) -> PhaseResult:
    """The VM's agent, inside its namespace: the settings and the trace, as ``agent resolve --json`` gives them."""
    argv = [sys.executable, "-m", "boshreg.agent", "resolve", "--agent-config", str(agent_json),
            "--deadline", f"{deadline:g}", "--json"]  # fmt: skip
    result = lab.run(vm, argv, timeout=deadline + 30)
    try:
        trace: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        return PhaseResult(False, None, None, error=f"the agent printed no trace: {result.stderr.strip()[-300:]}")
    detail = trace.get("verdict_detail") or {}
    booted = result.returncode == 0 and trace.get("settings") == example_settings(vm.name)
    return PhaseResult(booted, trace.get("verdict"), detail.get("fed_by"), error=trace.get("error"), trace=trace)


def _lost(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What the VM had in phase 1 and no longer has: injected files, its public key."""
    lost = [
        f"injected {path}" for path in before.get("injected_files", []) if path not in after.get("injected_files", [])
    ]
    if before.get("public_key") and before.get("public_key") != after.get("public_key"):
        lost.append("its public key")
    return lost


def _audit(config: Path, vms: list[DrillVm]) -> None:
    """Who read each VM's settings, by the registry's own audit trail (written in batches: waited for)."""
    engine = build_engine(load_config(config).db)
    try:
        deadline = time.monotonic() + 5
        while True:
            for vm in vms:
                reads = query_events(engine, instance_id=vm.name, limit=100)
                vm.reads_from = sorted(
                    {event.client for event in reads if event.action == "read" and event.status == 200}
                )
            if all(vm.reads_from or not vm.phases[PHASES[0]].booted for vm in vms) or time.monotonic() > deadline:
                return
            time.sleep(0.2)
    finally:
        engine.dispose()


def _why(config: Path, name: str, trace: dict[str, Any]) -> str:
    """`boshreg why`'s one line for a VM that did not boot."""
    registry = registry_side_from_database(load_config(config), name, str(config))
    found = diagnose(registry, vm_side_from_trace_document(trace, "the drill's agent trace") if trace else None)
    return f"{found.code}: {found.message}"


class BridgeRegistry:
    """A real ``boshreg serve`` on the bridge's host address, that can be stopped and started again."""

    def __init__(self, lab: NetLab, cloud: OpenStackStandIn, work_dir: Path, mode: str) -> None:
        port = free_port(lab.registry_address)
        password = secrets.token_urlsafe(18)
        self.secret = generate_secret() if mode == PER_VM else None
        http: dict[str, Any] = {
            "host": lab.registry_address, "port": port, "user": "admin", "password": password, "workers": 1,
        }  # fmt: skip
        if self.secret is not None:
            http["instance_secret"] = self.secret
        config = {
            "loglevel": "info",
            "http": http,
            "db": {"adapter": "sqlite", "database": str(work_dir / "registry.db")},
            "cloud": {
                "plugin": "openstack",
                "openstack": {"auth_url": cloud.auth_url, "username": cloud.username, "api_key": cloud.password,
                              "tenant": cloud.project, "region": "RegionOne"},
            },
        }  # fmt: skip
        self.config = work_dir / "registry.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.config.chmod(0o600)
        self.log = work_dir / "registry.log"
        self.url = f"http://{lab.registry_address}:{port}"
        self.admin = Endpoint("http", lab.registry_address, port, "admin", password)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeRegistry:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "boshreg", "serve", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        _wait_until_up(self._process, self.url, self.log)
        return self

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)


@contextmanager
def bridge_registry(lab: NetLab, cloud: OpenStackStandIn, work_dir: Path, mode: str) -> Iterator[BridgeRegistry]:
    """A registry on the lab's bridge, with the address check against ``cloud``; stopped on exit."""
    registry = BridgeRegistry(lab, cloud, work_dir, mode)
    try:
        yield registry.start()
    finally:
        registry.stop()


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    import httpx  # not in `serve` (test_structure)

    deadline = time.monotonic() + REGISTRY_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TestCloudError(f"the registry exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TestCloudError(f"the registry did not answer within {REGISTRY_START_SECONDS} s; see {log}")
