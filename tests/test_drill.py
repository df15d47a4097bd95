"""The outage drill on network namespaces: predictions hold, the network is ours alone, nothing is left."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from boshreg.testcloud.drill import bridge_registry
from boshreg.testcloud.netlab import DEFAULT_SUBNET, NetLab, network_lab, refusal
from boshreg.testcloud.openstack import FakeServer, OpenStackStandIn
from conftest import unusable
from support.cli import boshreg

FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture(scope="module")
def netns() -> None:
    """Root and iproute2: required in CI (BOSHREG_REQUIRE=netns), which runs as root."""
    problem = refusal()
    if problem is not None:
        unusable("netns", problem)


def ours() -> list[str]:
    """Namespaces and links a lab makes (all named bshr...): none may outlive it."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line for line in (namespaces + links).splitlines() if "bshr" in line]


@pytest.mark.usefixtures("netns")
def test_the_drill_passes_within_a_minute_and_leaves_nothing_behind(tmp_path: Path) -> None:
    forwarding = FORWARDING.read_text()
    started = time.monotonic()
    result = boshreg("testcloud", "drill", "--json", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["all_predictions_held"] is True
    assert elapsed < 60
    vms = report["vms"]
    assert [vm["created_as"] for vm in vms] == [
        "legacy",
        "legacy",
        "config-drive",
        "config-drive",
        "metadata",
        "metadata",
    ]
    assert [vm["predicted"] for vm in vms] == ["pinned"] * 2 + ["portable"] * 4
    subnet = ipaddress.ip_network(DEFAULT_SUBNET)
    metadata = report["metadata"]
    for vm in vms:
        # The registry saw each VM's own bridge address, never 127.x, in its audit trail.
        assert vm["reads_from"] == [vm["address"]]
        assert ipaddress.ip_address(vm["address"]) in subnet
        assert vm["phases"]["metadata only"]["booted"] is True
    # The metadata emulator was reached from inside the namespaces, at the URI their agent.json names.
    assert vms[-1]["phases"]["boot"]["fed_by"] == f"metadata service {metadata}/latest/user-data"
    assert vms[0]["phases"]["drives off"]["lost"] == ["injected /var/vcap/bosh/user_data.json"]
    assert ours() == []
    assert FORWARDING.read_text() == forwarding


@pytest.fixture
def lab(netns: None) -> Iterator[NetLab]:
    with network_lab(["vm-a", "vm-b"]) as made:
        yield made
    assert ours() == []


def test_a_namespace_has_no_route_but_the_bridge(lab: NetLab) -> None:
    for vm in lab.vms:
        routes = lab.run(vm, ["ip", "-4", "route", "show"], timeout=10).stdout.strip().splitlines()
        assert routes == [
            f"{lab.subnet} dev {f'bshr{lab.tag}v{lab.vms.index(vm)}'} proto kernel scope link src {vm.address}"
        ]


GET_OTHERS = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    urllib.request.urlopen(sys.argv[1], timeout=10)\n"
    "except urllib.error.HTTPError as exc:\n"
    "    print(exc.code, exc.read().decode())\n"
    "else:\n"
    "    print(200)\n"
)


def test_a_vm_asking_for_another_vms_settings_gets_the_mismatch_answer(lab: NetLab, tmp_path: Path) -> None:
    vm_a, vm_b = lab.vms
    cloud = OpenStackStandIn(
        "bosh", "cloud-pw", "bosh", [FakeServer("vm-a", fixed=[vm_a.address]), FakeServer("vm-b", fixed=[vm_b.address])]
    ).start()
    try:
        with bridge_registry(lab, cloud, tmp_path, "address-check") as registry:
            admin = (registry.admin.user or "", registry.admin.password or "")
            for name in ("vm-a", "vm-b"):
                stored = httpx.put(f"{registry.url}/instances/{name}/settings", content=b'{"agent_id":"x"}', auth=admin)
                assert stored.status_code == 200
            own = lab.run(
                vm_a, [sys.executable, "-c", GET_OTHERS, f"{registry.url}/instances/vm-a/settings"], timeout=30
            )
            other = lab.run(
                vm_a, [sys.executable, "-c", GET_OTHERS, f"{registry.url}/instances/vm-b/settings"], timeout=30
            )
    finally:
        cloud.stop()
    assert own.stdout.strip() == "200", own.stderr
    status, body = other.stdout.strip().split(" ", 1)
    assert status == "500"
    assert json.loads(body)["error"] == (
        "Instance IP mismatch: the caller's address is not one the cloud gives this instance"
    )
    log = (tmp_path / "registry.log").read_text()
    assert f"Instance IP mismatch, expected IP is `{vm_a.address}', actual IP(s): `{vm_b.address}'" in log


def test_outside_root_the_drill_is_refused_in_one_line(tmp_path: Path) -> None:
    if refusal() is not None:
        result = boshreg("testcloud", "drill", cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith("boshreg: error: network namespaces need root")
        return
    nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "boshreg",
         "testcloud", "drill"],
        capture_output=True, text=True, timeout=60, cwd="/", check=False,
    )  # fmt: skip
    assert nobody.returncode == 2, nobody.stderr
    assert nobody.stderr.strip().splitlines() == [
        "boshreg: error: network namespaces need root: run as root (CI does), or use `boshreg testcloud boot` "
        "on loopback"
    ]


@pytest.mark.usefixtures("netns")
def test_a_drive_fault_shows_where_the_prediction_breaks(tmp_path: Path) -> None:
    result = boshreg("testcloud", "drill", "--vms", "3", "--drive-fault", "wrong-label", "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert result.returncode == 1
    legacy = report["vms"][0]
    # inspect predicted pinned; the agent could not take the drive for a config drive and was fed by metadata
    assert (legacy["predicted"], legacy["agent_said"], legacy["matched"]) == ("pinned", "portable", False)
    assert report["faults"] == ["drive wrong-label"]
    assert ours() == []


@pytest.mark.usefixtures("netns")
def test_the_registry_down_at_first_boot_is_waited_for(tmp_path: Path) -> None:
    result = boshreg("testcloud", "drill", "--vms", "3", "--registry-late", "3", "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    assert report["faults"] == ["registry down for the first 3 s"]
    assert all(vm["phases"]["boot"]["booted"] for vm in report["vms"])


@pytest.mark.usefixtures("netns")
def test_a_failure_inside_the_lab_still_removes_everything() -> None:
    made: list[str] = []

    def fail_inside() -> None:
        with network_lab(["vm-x"]):
            made.extend(ours())
            raise RuntimeError("on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        fail_inside()
    assert made != []
    assert ours() == []


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.usefixtures("netns")
def test_an_interrupted_drill_removes_everything(tmp_path: Path, signal_number: int) -> None:
    drill = subprocess.Popen(
        [sys.executable, "-m", "boshreg", "testcloud", "drill", "--metadata-delay", "2", "--work-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert drill.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not drill.stdout.readline().startswith("4. boot"):
            pass  # the VMs are booting, slowly: the lab, the registry and the emulator are all up
        assert ours() != []
        drill.send_signal(signal_number)
        drill.wait(timeout=60)
    finally:
        if drill.poll() is None:
            drill.kill()
            drill.wait(timeout=30)
    assert drill.returncode == 130
    assert "Traceback" not in (drill.stderr.read() if drill.stderr else "")
    assert ours() == []
