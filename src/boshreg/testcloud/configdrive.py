"""Config drives as Nova builds them: ISO 9660, volume label ``config-2``, Rock Ridge and Joliet names,
``openstack/<every version>/...`` and ``ec2/<every version>/...``.

The layout is computed once (``drive_files``) and written either as a directory tree (what a mounted
drive looks like, and what genisoimage packs) or straight into an ISO image with pycdlib.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from boshreg.bootstrap.nova import CONFIG_DRIVE_LABEL as LABEL
from boshreg.bootstrap.nova import EC2_VERSIONS, OPENSTACK_VERSIONS
from boshreg.testcloud.vms import TestVm, meta_data_for_version


def drive_files(vm: TestVm) -> dict[str, bytes]:
    """Every file of the VM's config drive, by path relative to the drive's root."""
    files: dict[str, bytes] = {}
    listed = []
    for number, (path, content) in enumerate(sorted(vm.injected.items())):
        content_path = f"/content/{number:04d}"
        files[f"openstack{content_path}"] = content
        listed.append({"path": path, "content_path": content_path})
    for version in OPENSTACK_VERSIONS:
        base = f"openstack/{version}"
        meta = meta_data_for_version(vm.meta_data, version)
        if listed:
            meta["files"] = listed
        files[f"{base}/meta_data.json"] = json.dumps(meta).encode()
        files[f"{base}/vendor_data.json"] = b"{}"
        if version == "latest" or version >= "2015-10-15":
            files[f"{base}/network_data.json"] = json.dumps({"links": [], "networks": [], "services": []}).encode()
        if version == "latest" or version >= "2016-10-06":
            files[f"{base}/vendor_data2.json"] = b"{}"
        if vm.user_data is not None:
            files[f"{base}/user_data"] = vm.user_data
    ec2_meta: dict[str, object] = {
        "ami-id": "ami-00000001",
        "hostname": f"{vm.meta_data.get('hostname', vm.name)}.novalocal",
        "instance-id": vm.instance_id,
        "local-hostname": f"{vm.meta_data.get('hostname', vm.name)}.novalocal",
        "placement": {"availability-zone": vm.meta_data.get("availability_zone", "nova")},
    }
    if vm.public_key:
        ec2_meta["public-keys"] = {"0": {"openssh-key": vm.public_key}}
    for version in EC2_VERSIONS:
        files[f"ec2/{version}/meta-data.json"] = json.dumps(ec2_meta).encode()
        if vm.user_data is not None:
            files[f"ec2/{version}/user-data"] = vm.user_data
    return files


def write_directory(files: dict[str, bytes], root: Path) -> Path:
    """The drive as a directory tree: what a mounted drive shows, and what genisoimage packs."""
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return root


def write_iso(files: dict[str, bytes], output: Path, *, label: str = LABEL) -> Path:
    """The drive as an ISO 9660 image, as ``genisoimage -V config-2 -r -J`` makes it.

    ``label``: another volume label makes the drive a fault (the agent does not take it for a config drive).
    """
    import pycdlib  # imported here: only image building needs it

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, rock_ridge="1.09", joliet=3, sys_ident="LINUX")
    made: set[str] = set()
    for relative in sorted(files):
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                iso.add_directory(
                    iso_path=_iso_path(directory, is_file=False), rr_name=parts[depth - 1], joliet_path=f"/{directory}"
                )
                made.add(directory)
        content = files[relative]
        iso.add_fp(
            io.BytesIO(content),
            len(content),
            iso_path=_iso_path(relative, is_file=True),
            rr_name=parts[-1],
            joliet_path=f"/{relative}",
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        iso.write(str(output))
    finally:
        iso.close()
    return output


def _iso_path(relative: str, *, is_file: bool) -> str:
    """The plain ISO 9660 name (upper case, d-characters); readers use the Rock Ridge or Joliet one."""
    parts = [re.sub(r"[^A-Z0-9_]", "_", part.upper()) for part in relative.split("/")]
    if is_file:
        stem, _, extension = relative.rsplit("/", 1)[-1].upper().partition(".")
        parts[-1] = f"{re.sub(r'[^A-Z0-9_]', '_', stem)}.{re.sub(r'[^A-Z0-9_]', '_', extension)};1"
    return "/" + "/".join(parts)
