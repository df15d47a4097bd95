"""The CPI-side commands as an operator runs them: endpoint check, userdata render, inspect, doctor."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from boshreg.bootstrap.verdict import COST_PERSONALITY
from support.cli import assert_one_line_error, boshreg

FIXTURES = Path(__file__).parent / "fixtures"


def test_endpoint_check_prints_the_redacted_endpoint(tmp_path: Path) -> None:
    result = boshreg("endpoint", "check", "http://10.0.0.5:25777", "--user", "admin", "--password", "pw", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "http://admin:***@10.0.0.5:25777\n", "")


def test_endpoint_check_warns_about_the_old_default(tmp_path: Path) -> None:
    result = boshreg("endpoint", "check", "http://admin:admin@localhost:25695", cwd=tmp_path)
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3
    assert all(line.startswith("warning: ") for line in warnings)


def test_endpoint_check_refuses_a_missing_password(tmp_path: Path) -> None:
    result = boshreg("endpoint", "check", "http://admin@10.0.0.5:25777", cwd=tmp_path)
    assert_one_line_error(result, "has a user (admin) but no password", "registry.password")


def test_endpoint_check_json(tmp_path: Path) -> None:
    good = boshreg("endpoint", "check", "http://a:b@localhost:25777", "--json", cwd=tmp_path)
    body = json.loads(good.stdout)
    assert (good.returncode, body["valid"], body["endpoint"]) == (0, True, "http://a:***@localhost:25777")
    assert "loopback" in body["warnings"][0]["problem"]
    bad = boshreg("endpoint", "check", "ftp://h", "--json", cwd=tmp_path)
    assert (bad.returncode, json.loads(bad.stdout)["valid"]) == (2, False)


def test_userdata_render_json_gives_nova_and_openstacksdk_forms(tmp_path: Path) -> None:
    (tmp_path / "key.pub").write_text("ssh-ed25519 AAAA bosh\n")
    result = boshreg(
        "userdata",
        "render",
        "--name",
        "vm-1",
        "--endpoint",
        "http://admin:pw@10.0.0.5:25777",
        "--dns",
        "10.0.0.2",
        "--public-key",
        "key.pub",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["user_data"] == {
        "server": {"name": "vm-1"},
        "registry": {"endpoint": "http://admin:pw@10.0.0.5:25777"},
        "dns": {"nameserver": ["10.0.0.2"]},
        "openssh": {"public_key": "ssh-ed25519 AAAA bosh"},
    }
    assert json.loads(base64.b64decode(body["nova"]["user_data"])) == body["user_data"]
    assert body["openstacksdk"] == body["nova"]
    assert (body["delivery"], body["verdict"]) == ("metadata", "portable")


def test_userdata_render_legacy_lists_the_personality_costs(tmp_path: Path) -> None:
    result = boshreg(
        "userdata",
        "render",
        "--name",
        "vm-1",
        "--endpoint",
        "http://a:b@10.0.0.5:25777",
        "--delivery",
        "legacy",
        cwd=tmp_path,
    )
    assert result.returncode == 0
    verdict = result.stdout[result.stdout.index("verdict: ") :]
    # The same user data on the drive and on the metadata service: fed by the drive, nothing lost without it.
    assert verdict.startswith("verdict: portable (fed by config drive ec2/latest/user-data)\n  cost of the drive: ")
    assert f"  cost of the drive: {COST_PERSONALITY}\n" in verdict


def test_userdata_render_with_the_old_default_endpoint_is_broken_and_warned(tmp_path: Path) -> None:
    result = boshreg(
        "userdata", "render", "--name", "vm-1", "--endpoint", "http://admin:admin@localhost:25695", cwd=tmp_path
    )
    assert result.returncode == 1
    verdict = result.stdout[result.stdout.index("verdict: ") :].splitlines()
    assert verdict[0] == "verdict: broken (fed by metadata service /latest/user-data)"
    assert verdict[1].startswith("  does not boot: http://admin:***@localhost:25695 is a loopback address")
    assert "uses port 25695, the old deployer's default" in result.stderr
    assert "uses the well-known credentials admin:admin" in result.stderr


def test_userdata_render_refuses_a_name_the_registry_refuses(tmp_path: Path) -> None:
    for name in ("vm 1", "vm/1"):
        result = boshreg("userdata", "render", "--name", name, "--endpoint", "http://a:b@10.0.0.5:25777", cwd=tmp_path)
        assert_one_line_error(result, "the registry refuses it as a key")


def test_userdata_render_registry_less(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text(json.dumps({"agent_id": "a-1", "networks": {"n": {"dns": ["10.0.0.2"]}}}))
    result = boshreg("userdata", "render", "--name", "vm-1", "--settings", "settings.json", "--json", cwd=tmp_path)
    document = json.loads(result.stdout)["user_data"]
    assert (document["agent_id"], document["dns"], "registry" in document) == (
        "a-1",
        {"nameserver": ["10.0.0.2"]},
        False,
    )


def test_userdata_render_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_text(json.dumps({"agent_id": "a", "env": {"blob": "x" * 50_000}}))
    (tmp_path / "settings20k.json").write_text(json.dumps({"agent_id": "a", "env": {"blob": "x" * 20_000}}))
    (tmp_path / "broken.json").write_text("{nope")
    (tmp_path / "latin1.json").write_bytes(b'{"agent_id": "caf\xe9"}')
    cases = [
        (["--name", "vm-1"], "give --endpoint (registry mode) or --settings"),
        (["--name", "vm-1", "--settings", "big.json"], "nova accepts at most 49,149 bytes"),
        (["--name", "vm-1", "--settings", "big.json"], "use registry mode (--endpoint instead of --settings"),
        (["--name", "vm-1", "--settings", "settings20k.json", "--cloud", "aws"], "EC2 accepts at most 16,384 bytes"),
        (["--name", "vm-1", "--settings", "broken.json"], "--settings broken.json is not JSON"),
        (["--name", "vm-1", "--settings", "latin1.json"], "--settings latin1.json is not UTF-8 text"),
        (["--name", "vm-1", "--endpoint", "http://10.0.0.5:25777"], "--endpoint has no credentials"),
        (["--name", "vm-1", "--endpoint", "http://a:b@h:1", "--dns", "nope"], "--dns 'nope' is not an IP address"),
        (["--endpoint", "http://a:b@h:1"], "Missing option '--name'"),
    ]
    for args, expected in cases:
        assert_one_line_error(boshreg("userdata", "render", *args, cwd=tmp_path), expected)


def test_inspect_the_legacy_request(tmp_path: Path) -> None:
    result = boshreg("inspect", str(FIXTURES / "legacy_create_server.json"), cwd=tmp_path)
    assert result.returncode == 1
    assert "  only the personality copy has openssh.public_key\n" in result.stdout
    assert "\nverdict: pinned (fed by config drive ec2/latest/user-data)\n  without the drive: " in result.stdout


def test_inspect_json_and_a_portable_request(tmp_path: Path) -> None:
    request = json.loads((FIXTURES / "legacy_create_server.json").read_text())
    del request["server"]["personality"]
    (tmp_path / "portable.json").write_text(json.dumps(request))
    result = boshreg("inspect", "portable.json", "--json", cwd=tmp_path)
    assert (result.returncode, json.loads(result.stdout)["verdict"]) == (0, "portable")
    assert "admin:admin@" not in result.stdout  # endpoints are redacted in reports


def test_inspect_bad_input_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad64.json").write_text(json.dumps({"server": {"user_data": "%%%"}}))
    assert_one_line_error(boshreg("inspect", "bad.json", cwd=tmp_path), "bad.json is not JSON")
    assert_one_line_error(boshreg("inspect", "bad64.json", cwd=tmp_path), "server.user_data is not valid base64")
    assert_one_line_error(boshreg("inspect", "absent.json", cwd=tmp_path), "absent.json")


def test_doctor_exit_codes(tmp_path: Path) -> None:
    crash = boshreg("doctor", str(FIXTURES / "micro_bosh_no_endpoint.yml"), cwd=tmp_path)
    assert crash.returncode == 1
    assert "  FAIL registry endpoint: cloud.properties.registry.endpoint is missing" in crash.stdout
    assert "              endpoint: http://admin:<password>@<registry-host>:25777" in crash.stdout
    fixed = boshreg("doctor", str(FIXTURES / "create_env_fixed.yml"), "--json", cwd=tmp_path)
    assert (fixed.returncode, json.loads(fixed.stdout)["failed"]) == (0, False)
    (tmp_path / "bad.yml").write_text("a: [b\n")
    assert_one_line_error(boshreg("doctor", "bad.yml", cwd=tmp_path), "bad.yml is not valid YAML")
    assert_one_line_error(boshreg("doctor", "absent.yml", cwd=tmp_path), "cannot read absent.yml")
