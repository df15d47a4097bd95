"""The user data document: built as the CPI builds it, within nova's limits, validated key by key."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boshreg.bootstrap.endpoint import parse_endpoint
from boshreg.bootstrap.nova import EC2_MAX_RAW, NOVA_MAX_RAW
from boshreg.bootstrap.userdata import (
    UserDataError,
    build_user_data,
    check_size,
    decode,
    encode,
    first_dns,
    validate,
)
from boshreg.bootstrap.verdict import boot_problems

ENDPOINT = parse_endpoint("http://admin:s%40cret@10.0.0.5:25777")


def test_registry_mode_document_has_the_cpi_keys() -> None:
    document = build_user_data("vm-1", ENDPOINT, {"default": {"dns": ["10.0.0.2"]}}, "ssh-rsa AAAA k\n")
    assert document == {
        "server": {"name": "vm-1"},
        "registry": {"endpoint": "http://admin:s%40cret@10.0.0.5:25777"},
        "dns": {"nameserver": ["10.0.0.2"]},
        "openssh": {"public_key": "ssh-rsa AAAA k"},
    }
    assert validate(document) == []


def test_dns_comes_from_the_first_network_that_has_some() -> None:
    networks = {
        "a": {"ip": "10.0.0.9"},
        "b": {"dns": None},
        "c": {"dns": ["10.0.1.2", "10.0.1.3"]},
        "d": {"dns": ["9.9.9.9"]},
    }
    assert first_dns(networks) == ["10.0.1.2", "10.0.1.3"]


def test_dns_and_openssh_are_left_out_when_not_given() -> None:
    assert set(build_user_data("vm-1", ENDPOINT, {"a": {"ip": "10.0.0.9"}})) == {"server", "registry"}


def test_registry_less_document_carries_settings_at_the_top_level() -> None:
    settings = {"agent_id": "agent-1", "networks": {"n": {"ip": "10.0.0.9"}}, "blobstore": {"provider": "dav"}}
    document = build_user_data("vm-1", None, None, None, settings)
    assert document == {**settings, "server": {"name": "vm-1"}}
    assert validate(document) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"networks": {}}, "no agent_id"), ({"agent_id": "a", "server": {}}, "may not carry server")],
)
def test_unusable_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(UserDataError, match=message):
        build_user_data("vm-1", None, None, None, settings)


def test_an_endpoint_without_credentials_is_refused() -> None:
    with pytest.raises(UserDataError, match="no credentials"):
        build_user_data("vm-1", parse_endpoint("http://h:1", require_credentials=False))


def test_nothing_to_find_is_refused() -> None:
    with pytest.raises(UserDataError, match="neither a registry endpoint nor agent settings"):
        build_user_data("vm-1")


def test_nova_size_limit_is_checked_before_any_call() -> None:
    check_size(b"x" * NOVA_MAX_RAW)  # exactly at the limit: 65,535 characters once encoded
    with pytest.raises(
        UserDataError, match=r"49,150 bytes \(65,536 once base64-encoded\); nova accepts at most 49,149"
    ):
        check_size(b"x" * (NOVA_MAX_RAW + 1))


def test_encode_refuses_a_document_over_the_limit() -> None:
    settings = {"agent_id": "a", "env": {"blob": "x" * NOVA_MAX_RAW}}
    with pytest.raises(UserDataError, match="use registry mode"):
        encode(build_user_data("vm-1", None, None, None, settings))


def test_ec2_limit_is_16_kib_before_encoding() -> None:
    check_size(b"x" * EC2_MAX_RAW, "aws")
    with pytest.raises(UserDataError, match="EC2 accepts at most 16,384 bytes"):
        check_size(b"x" * (EC2_MAX_RAW + 1), "aws")


def test_a_server_name_the_registry_refuses_is_refused_when_rendering() -> None:
    for name in ("vm 1", "vm/1", "x" * 256):
        with pytest.raises(UserDataError, match="the registry refuses it as a key"):
            build_user_data(name, ENDPOINT)


def test_an_endpoint_without_credentials_is_a_warning_not_a_stop() -> None:
    document = {"server": {"name": "vm"}, "registry": {"endpoint": "http://10.0.0.5:25777"}}
    assert validate(document) == []
    problems, warnings = boot_problems(document)
    assert problems == []
    assert warnings == [
        "http://10.0.0.5:25777 carries no credentials: only a registry that checks callers' addresses against the "
        "cloud (cloud.plugin) serves this VM; any other answers 401"
    ]
    assert build_user_data("vm", parse_endpoint("http://10.0.0.5:25777", require_credentials=False), anonymous=True)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"registry": {"endpoint": "http://a:b@h:1"}}, "server.name is missing"),
        ({"server": {"name": ""}, "registry": {"endpoint": "http://a:b@h:1"}}, "server.name is missing"),
        ({"server": {"name": "vm"}}, "registry.endpoint is missing and there is no agent_id"),
        ({"server": {"name": "vm"}, "agent_id": "a", "dns": {"nameserver": "10.0.0.2"}}, "must be a list"),
        ({"server": {"name": "vm"}, "agent_id": "a", "dns": {"nameserver": ["dns.local"]}}, "'dns.local' is not an IP"),
        ({"server": {"name": "vm"}, "agent_id": "a", "openssh": {"public_key": 5}}, "openssh.public_key must be"),
    ],
)
def test_validation_names_each_problem(document: dict[str, object], problem: str) -> None:
    problems = validate(document)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("raw", "message"), [(b"{not json", "not JSON: .* at line 1 column 2"), (b"[1]", "not an object")]
)
def test_decode_errors_name_the_source(raw: bytes, message: str) -> None:
    with pytest.raises(UserDataError, match=f"^nova user_data .*{message}"):
        decode(raw, "nova user_data")


names = st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True)  # what the registry takes as a key
nameservers = st.lists(st.ip_addresses().map(str), max_size=3)


@given(name=names, dns=nameservers, key=st.none() | st.text(min_size=1, max_size=60).filter(str.strip))
def test_build_encode_decode_round_trips_and_validates(name: str, dns: list[str], key: str | None) -> None:
    document = build_user_data(name, ENDPOINT, {"net": {"dns": dns}}, key)
    assert decode(encode(document)) == json.loads(json.dumps(document))
    assert validate(document) == []
