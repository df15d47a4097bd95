"""VMs as Linux network namespaces on a bridge of our own, with no uplink: the closest this machine gets
to a cloud's network.

Each VM is a namespace with one veth on the bridge and one address in a test range (10.244.0.0/24 by
default) that exists only there; the host side of the bridge holds the registry's and the metadata
service's addresses. Nothing is routed off the bridge: no forwarding, no NAT, no default route in a
namespace, and ``net.ipv4.ip_forward`` is never touched (checked before and after). Everything made is
removed on exit, also on Ctrl-C and on failure. Root only.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from boshreg.testcloud.vms import TestCloudError

DEFAULT_SUBNET = "10.244.0.0/24"
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
IP_SECONDS = 10
MAX_VMS = 200


@dataclass(frozen=True)
class LabVm:
    """One VM's namespace: its name, its address on the bridge, and the host end of its cable."""

    name: str
    namespace: str
    address: str
    host_link: str


@dataclass
class NetLab:
    """What was made: the bridge, the host's addresses on it, the VMs' namespaces."""

    tag: str
    subnet: ipaddress.IPv4Network
    bridge: str
    registry_address: str
    metadata_address: str
    vms: list[LabVm] = field(default_factory=list)

    def run(self, vm: LabVm, argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``argv`` inside ``vm``'s namespace, as the VM would."""
        return subprocess.run(
            ["ip", "netns", "exec", vm.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )


def refusal() -> str | None:
    """Why this machine cannot build the lab, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root: run as root (CI does), or use `boshreg testcloud boot` on loopback"
    if subprocess.run(["which", "ip"], capture_output=True, check=False).returncode != 0:
        return "the `ip` command is missing: apt-get install iproute2 (make tools does)"
    return None


@contextmanager
def network_lab(names: Sequence[str], subnet: str = DEFAULT_SUBNET) -> Iterator[NetLab]:
    """A bridge, two host addresses and one namespace per VM name; all of it removed on exit."""
    problem = refusal()
    if problem is not None:
        raise TestCloudError(problem)
    network = _subnet(subnet, len(names))
    _refuse_if_routed(network)
    forwarding_before = FORWARDING.read_text().strip()
    tag = secrets.token_hex(2)
    hosts = list(network.hosts())
    lab = NetLab(tag, network, f"bshr{tag}", str(hosts[0]), str(hosts[1]))
    made: list[list[str]] = []  # undo commands, newest last
    try:
        _ip("link", "add", lab.bridge, "type", "bridge")
        made.append(["link", "del", lab.bridge])
        for address in (lab.registry_address, lab.metadata_address):
            _ip("addr", "add", f"{address}/{network.prefixlen}", "dev", lab.bridge)
        _ip("link", "set", lab.bridge, "up")
        for index, name in enumerate(names):
            vm = LabVm(name, f"bshr{tag}-{index}", str(hosts[9 + index]), f"bshr{tag}h{index}")
            _ip("netns", "add", vm.namespace)
            made.append(["netns", "del", vm.namespace])
            inside = f"bshr{tag}v{index}"
            _ip("link", "add", vm.host_link, "type", "veth", "peer", "name", inside)
            made.append(["link", "del", vm.host_link])
            _ip("link", "set", inside, "netns", vm.namespace)
            _ip("link", "set", vm.host_link, "master", lab.bridge)
            _ip("link", "set", vm.host_link, "up")
            _ip("-n", vm.namespace, "addr", "add", f"{vm.address}/{network.prefixlen}", "dev", inside)
            _ip("-n", vm.namespace, "link", "set", inside, "up")
            _ip("-n", vm.namespace, "link", "set", "lo", "up")
            lab.vms.append(vm)
        yield lab
    finally:
        for undo in reversed(made):
            subprocess.run(["ip", *undo], capture_output=True, timeout=IP_SECONDS, check=False)
        if FORWARDING.read_text().strip() != forwarding_before:  # never expected: we do not touch it
            raise TestCloudError("net.ipv4.ip_forward changed while the lab ran; check this machine's network")


def _subnet(text: str, vms: int) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise TestCloudError(f"--subnet {text!r} is not a network ({exc}); write e.g. {DEFAULT_SUBNET}") from None
    if not isinstance(network, ipaddress.IPv4Network) or not network.is_private or network.is_loopback:
        raise TestCloudError(f"--subnet {text}: give a private IPv4 range of your own, e.g. {DEFAULT_SUBNET}")
    if not 1 <= vms <= min(MAX_VMS, network.num_addresses - 12):
        raise TestCloudError(f"--subnet {text} has room for {max(0, network.num_addresses - 12)} VMs, not {vms}")
    return network


def _refuse_if_routed(network: ipaddress.IPv4Network) -> None:
    """Never shadow a network this machine already reaches: the lab's range must be unused here."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=False).stdout
    for line in routes.splitlines():
        destination = line.split()[0]
        if destination == "default":
            continue
        try:
            if ipaddress.ip_network(destination, strict=False).overlaps(network):
                raise TestCloudError(
                    f"--subnet {network} overlaps a route this machine has ({line.strip()}); choose another range"
                )
        except ValueError:
            continue


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_SECONDS, check=False)
    if result.returncode != 0:
        raise TestCloudError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
