"""The IaaS address check for unauthenticated reads, through the real SDKs: openstacksdk against the
Keystone/Nova stand-in, boto3 against a moto EC2 server. Requests come from chosen loopback addresses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from boshreg.registry.iaas import CachedAddresses, InstanceUnknown
from boshreg.testcloud.openstack import FakeServer, OpenStackStandIn
from conftest import RegistryLauncher
from support.http import get_from
from support.registry import ADMIN_PASSWORD, RegistryProcess, free_port

ADMIN = ("admin", ADMIN_PASSWORD)
SETTINGS = b'{"agent_id": "a-1"}'


def put(registry: RegistryProcess, key: str) -> None:
    assert httpx.put(f"{registry.url}/instances/{key}/settings", content=SETTINGS, auth=ADMIN).status_code == 200


def read(registry: RegistryProcess, key: str, source: str) -> tuple[int, dict[str, object]]:
    status, body = get_from(f"{registry.url}/instances/{key}/settings", source)
    return status, json.loads(body)


# --- OpenStack -----------------------------------------------------------------------------------


@pytest.fixture
def openstack_cloud() -> Iterator[OpenStackStandIn]:
    cloud = OpenStackStandIn(
        "bosh",
        "api-key-secret",
        "bosh",
        [
            FakeServer("vm-os", fixed=["127.0.0.2"], floating=["127.0.0.4"]),
            FakeServer("vm-os-other", fixed=["127.0.0.5"]),
        ],
    ).start()
    yield cloud
    cloud.stop()


def openstack_registry(
    start: RegistryLauncher, cloud: OpenStackStandIn, api_key: str = "api-key-secret", cache: float = 30
) -> RegistryProcess:
    return start(
        request_timeout=5,
        cloud={
            "plugin": "openstack",
            "address_cache_seconds": cache,
            "openstack": {
                "auth_url": cloud.auth_url,
                "username": "bosh",
                "api_key": api_key,
                "tenant": "bosh",
                "region": "RegionOne",
            },
        },
    )


def test_openstack_fixed_and_floating_addresses_may_read(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    assert read(registry, "vm-os", "127.0.0.2") == (200, {"status": "ok", "settings": SETTINGS.decode()})
    assert read(registry, "vm-os", "127.0.0.4")[0] == 200


def test_openstack_other_addresses_get_the_originals_mismatch(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    status, body = read(registry, "vm-os", "127.0.0.5")  # another VM's address
    assert (status, body["status"]) == (500, "error")
    # The original's status and words, without the VM's addresses: those go to the operator's log only.
    assert body["error"] == "Instance IP mismatch: the caller's address is not one the cloud gives this instance"
    registry.stop()
    assert "Instance IP mismatch, expected IP is `127.0.0.5', actual IP(s): `127.0.0.2, 127.0.0.4'" in registry.stderr()


def test_openstack_check_is_skipped_for_127_0_0_1_and_unknown_servers_are_404(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    assert read(registry, "vm-os", "127.0.0.1")[0] == 200
    status, body = read(registry, "vm-nowhere", "127.0.0.2")
    assert (status, body["error"]) == (404, "OpenStack has no server named vm-nowhere")


def test_openstack_lookups_are_cached(start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn) -> None:
    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    for _ in range(5):
        assert read(registry, "vm-os", "127.0.0.2")[0] == 200
    assert sum("servers" in r for r in openstack_cloud.requests) == 1


def test_openstack_outage_is_503(start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn) -> None:
    registry = openstack_registry(start_registry, openstack_cloud, cache=0)
    put(registry, "vm-os")
    assert read(registry, "vm-os", "127.0.0.2")[0] == 200
    openstack_cloud.fail_with = 503
    status, body = read(registry, "vm-os", "127.0.0.2")
    assert (status, body["status"]) == (503, "error")
    assert body["error"] == "cannot check the caller's address now"
    assert "address check for vm-os: OpenStack at" in registry.stderr()
    openstack_cloud.fail_with = None
    assert read(registry, "vm-os", "127.0.0.2")[0] == 200


def test_openstack_wrong_credentials_are_503_and_never_logged(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = openstack_registry(start_registry, openstack_cloud, api_key="wrong-api-key-xyz")
    put(registry, "vm-os")
    assert read(registry, "vm-os", "127.0.0.2")[0] == 503
    assert "wrong-api-key-xyz" not in registry.stderr()


def test_credentials_still_work_with_a_cloud(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    status, _ = get_from(f"{registry.url}/instances/vm-os/settings", "127.0.0.9", auth=ADMIN)
    assert status == 200


# --- AWS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_ec2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("moto server did not start")
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def aws_instance(moto_ec2: str) -> str:
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_ec2,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, PrivateIpAddress="127.0.0.2")[
        "Instances"
    ][0]
    return str(instance["InstanceId"])


def aws_registry(start: RegistryLauncher, endpoint: str) -> RegistryProcess:
    return start(
        request_timeout=5,
        cloud={
            "plugin": "aws",
            "aws": {
                "access_key_id": "testing",
                "secret_access_key": "testing",
                "region": "us-east-1",
                "ec2_endpoint": endpoint,
                "max_retries": 0,
            },
        },
    )


def test_aws_instance_address_may_read(start_registry: RegistryLauncher, moto_ec2: str, aws_instance: str) -> None:
    registry = aws_registry(start_registry, moto_ec2)
    put(registry, aws_instance)
    assert read(registry, aws_instance, "127.0.0.2")[0] == 200
    status, body = read(registry, aws_instance, "127.0.0.3")
    assert status == 500
    assert body["error"] == "Instance IP mismatch: the caller's address is not one the cloud gives this instance"


def test_aws_unknown_instance_is_404(start_registry: RegistryLauncher, moto_ec2: str) -> None:
    registry = aws_registry(start_registry, moto_ec2)
    status, body = read(registry, "i-0123456789abcdef0", "127.0.0.2")
    assert (status, body["status"]) == (404, "not_found")


def test_aws_outage_is_503(start_registry: RegistryLauncher) -> None:
    registry = aws_registry(start_registry, f"http://127.0.0.1:{free_port()}")
    status, body = read(registry, "i-0123456789abcdef0", "127.0.0.2")
    assert (status, body["status"]) == (503, "error")
    assert "AWS EC2 in us-east-1" in registry.stderr()


def test_address_check_outcomes_are_audited(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn, tmp_path: Path
) -> None:
    from support.cli import boshreg

    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    read(registry, "vm-os", "127.0.0.2")
    read(registry, "vm-os", "127.0.0.5")
    time.sleep(1.0)
    config = next(tmp_path.glob("registry-*.yml"))
    events = json.loads(
        boshreg("events", "--config", str(config), "--instance", "vm-os", "--json", cwd=tmp_path).stdout
    )
    assert [(e["client"], e["credential"], e["outcome"]) for e in reversed(events)][-2:] == [
        ("127.0.0.2", "anonymous", "ok"),
        ("127.0.0.5", "anonymous", "ip_mismatch"),
    ]


def test_cached_addresses_expire() -> None:
    calls: list[str] = []

    class Lookup:
        def addresses(self, instance_key: str) -> set[str]:
            calls.append(instance_key)
            return {"10.0.0.7"}

    clock = [0.0]
    cached = CachedAddresses(Lookup(), ttl=30, now=lambda: clock[0])
    cached.addresses("vm-1")
    cached.addresses("vm-1")
    clock[0] = 31
    cached.addresses("vm-1")
    assert calls == ["vm-1", "vm-1"]


def test_a_second_server_named_like_the_victim_reads_nothing(start_registry: RegistryLauncher) -> None:
    cloud = OpenStackStandIn(
        "bosh", "api-key-secret", "bosh",
        [FakeServer("vm-victim", fixed=["127.0.0.2"]), FakeServer("vm-victim", fixed=["127.0.0.9"])],
    ).start()  # fmt: skip
    try:
        registry = openstack_registry(start_registry, cloud)
        put(registry, "vm-victim")
        for source in ("127.0.0.9", "127.0.0.2"):  # the impostor, and even the victim: the name is ambiguous
            status, body = read(registry, "vm-victim", source)
            assert (status, body["status"]) == (500, "error")
            assert "127.0.0" not in str(body["error"])
    finally:
        cloud.stop()
    registry.stop()
    assert "2 servers named vm-victim" in registry.stderr()


def test_mismatches_and_unknown_names_count_as_failures(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = openstack_registry(start_registry, openstack_cloud)
    put(registry, "vm-os")
    statuses = [read(registry, f"vm-made-up-{n}", "127.0.0.7")[0] for n in range(12)]
    assert statuses[:10] == [404] * 10
    assert statuses[10:] == [429, 429]  # the stranger is blocked; the cloud was asked 10 times, not 12
    assert sum("servers" in r for r in openstack_cloud.requests) == 10
    assert read(registry, "vm-os", "127.0.0.2")[0] == 200  # the VM itself is not


def test_unknown_and_ambiguous_answers_are_cached_too() -> None:
    calls: list[str] = []

    class Lookup:
        def addresses(self, instance_key: str) -> set[str]:
            calls.append(instance_key)
            raise InstanceUnknown(f"no {instance_key}")

    cached = CachedAddresses(Lookup(), ttl=30)
    for _ in range(3):
        with pytest.raises(InstanceUnknown):
            cached.addresses("vm-nowhere")
    assert calls == ["vm-nowhere"]


def test_an_ipv4_caller_on_a_dual_stack_socket_is_compared_as_ipv4(
    start_registry: RegistryLauncher, openstack_cloud: OpenStackStandIn
) -> None:
    registry = start_registry(
        host="::",
        request_timeout=5,
        cloud={
            "plugin": "openstack",
            "openstack": {"auth_url": openstack_cloud.auth_url, "username": "bosh", "api_key": "api-key-secret",
                          "tenant": "bosh", "region": "RegionOne"},
        },
    )  # fmt: skip
    put(registry, "vm-os")
    assert read(registry, "vm-os", "127.0.0.2")[0] == 200  # seen as ::ffff:127.0.0.2, compared as 127.0.0.2
    assert read(registry, "vm-os", "127.0.0.1")[0] == 200  # the original's exemption holds on "::" too
    assert read(registry, "vm-os", "127.0.0.5")[0] == 500
