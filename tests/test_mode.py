"""`boshreg mode`: does a stemcell need a registry? Real stemcell.MF texts, with and without versions."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from support.cli import assert_one_line_error, boshreg

TRUSTY = """---
name: bosh-openstack-kvm-ubuntu-trusty-go_agent
version: '3586.100'
bosh_protocol: '1'
sha1: 6fb3ba3b9a0d2a2dd8c6f0a6e4d4b9f4f8b5a3c1
operating_system: ubuntu-trusty
stemcell_formats:
- openstack-raw
cloud_properties:
  name: bosh-openstack-kvm-ubuntu-trusty-go_agent
  version: '3586.100'
  infrastructure: openstack
  hypervisor: kvm
  disk: 3072
  disk_format: qcow2
  container_format: bare
  os_type: linux
  os_distro: ubuntu
  architecture: x86_64
  auto_disk_config: true
"""
XENIAL_V1 = TRUSTY.replace("trusty", "xenial").replace("3586.100", "170.5") + "api_version: 1\n"
XENIAL_V2 = TRUSTY.replace("trusty", "xenial").replace("3586.100", "621.74") + "api_version: 2\n"
JAMMY_V3 = TRUSTY.replace("trusty", "jammy").replace("3586.100", "1.500") + "api_version: 3\n"

# stemcell, --director, --cpi, registry needed, a phrase of the advice
TABLE = [
    ("no api_version", TRUSTY, None, None, True, "on a director before 272.0.0 its own registry serves it"),
    ("no api_version, old director", TRUSTY, "271.2.0", None, True, "the director's registry serves it"),
    ("no api_version, current director, Ruby OpenStack CPI", TRUSTY, "280.0.0", "openstack-ruby", True,
     "set the CPI's registry.endpoint"),
    ("no api_version, current director, AWS CPI", TRUSTY, "v280.1.2", "aws", True, "use a stemcell with api_version 2"),
    ("api_version 1", XENIAL_V1, "272.0.0", None, True, "with the Ruby OpenStack CPI: point its registry.endpoint"),
    ("api_version 2", XENIAL_V2, None, None, False, "nothing"),
    ("api_version 2, current director", XENIAL_V2, "280.0.0", "openstack-go", False, "nothing"),
    ("api_version 3", JAMMY_V3, "280.0.0", "aws", False, "nothing"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "manifest", "director", "cpi", "needed", "advice"), TABLE, ids=[r[0] for r in TABLE])
def test_the_answer_for_each_stemcell(
    tmp_path: Path, case: str, manifest: str, director: str | None, cpi: str | None, needed: bool, advice: str
) -> None:
    (tmp_path / "stemcell.MF").write_text(manifest)
    options = [*(["--director", director] if director else []), *(["--cpi", cpi] if cpi else [])]
    result = boshreg("mode", "stemcell.MF", *options, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["registry_needed"] is needed, case
    assert advice in answer["advice"], answer


def test_a_stemcell_tarball_is_read(tmp_path: Path) -> None:
    content = TRUSTY.encode()
    with tarfile.open(tmp_path / "stemcell.tgz", "w:gz") as tarball:
        info = tarfile.TarInfo("stemcell.MF")
        info.size = len(content)
        tarball.addfile(info, io.BytesIO(content))
    result = boshreg("mode", "stemcell.tgz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bosh-openstack-kvm-ubuntu-trusty-go_agent 3586.100: needs a registry\n")
    assert "  because stemcell api_version missing: counts as 1" in result.stdout


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "stemcell.MF").write_text(TRUSTY)
    (tmp_path / "other.yml").write_text("a: 1\n")
    assert_one_line_error(boshreg("mode", "absent.MF", cwd=tmp_path), "cannot read absent.MF")
    assert_one_line_error(boshreg("mode", "other.yml", cwd=tmp_path), "is not a stemcell manifest")
    assert_one_line_error(boshreg("mode", "stemcell.MF", "--director", "latest", cwd=tmp_path), "is not a version")
