"""Reading a config drive as Nova builds it: ISO 9660 labelled ``config-2``, Rock Ridge and Joliet names.

The drive may be a mounted directory, an image file, or the block device itself (found by its label).
An image or device is read without mounting through pycdlib when it is installed (an optional extra,
imported only here and only when needed); otherwise, as root, it is mounted read-only.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from boshreg.bootstrap.nova import (
    CONFIG_DRIVE_LABEL,
    DRIVE_EC2_META_DATA,
    DRIVE_EC2_USER_DATA,
    DRIVE_OPENSTACK_META_DATA,
    DRIVE_OPENSTACK_USER_DATA,
)

LABEL = CONFIG_DRIVE_LABEL
BY_LABEL = Path("/dev/disk/by-label") / LABEL
# Where user data and metadata sit on a drive: the OpenStack layout, then the EC2 one.
LAYOUTS = (
    (DRIVE_OPENSTACK_USER_DATA, DRIVE_OPENSTACK_META_DATA),
    (DRIVE_EC2_USER_DATA, DRIVE_EC2_META_DATA),
)


class DriveError(Exception):
    """A drive that is there but cannot be read; the message says what to do."""


class DriveNotFound(DriveError):
    """No drive at all."""


class Drive:
    """A readable drive; closing it releases whatever opening took (an image handle, a mount)."""

    where = ""

    def read(self, relative_path: str) -> bytes | None:
        """The file's bytes, or None when the drive has no such file."""
        raise NotImplementedError

    def close(self) -> None:
        return None

    def __enter__(self) -> Drive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class DirectoryDrive(Drive):
    """A drive already mounted (or unpacked) at a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def read(self, relative_path: str) -> bytes | None:
        try:
            return (self.root / relative_path).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None


class IsoDrive(Drive):
    """An ISO 9660 image or device read in place with pycdlib."""

    def __init__(self, path: Path, pycdlib: Any) -> None:
        self.where = str(path)
        self._iso = pycdlib.PyCdlib()
        self._invalid = pycdlib.pycdlibexception.PyCdlibException
        try:
            self._iso.open(str(path))
        except (self._invalid, OSError) as exc:
            raise DriveError(f"{path} is not an ISO 9660 image ({exc})") from None
        label = self._iso.pvd.volume_identifier.decode("ascii", "replace").strip()
        if label != LABEL:
            self._iso.close()
            raise DriveError(f"{path} is an ISO 9660 image labelled {label!r}, not {LABEL!r}")

    def read(self, relative_path: str) -> bytes | None:
        absolute = "/" + relative_path
        attempts = []
        if self._iso.has_rock_ridge():
            attempts.append({"rr_path": absolute})
        if self._iso.has_joliet():
            attempts.append({"joliet_path": absolute})
        for where in attempts:
            buffer = io.BytesIO()
            try:
                self._iso.get_file_from_iso_fp(buffer, **where)
            except self._invalid:
                continue
            return buffer.getvalue()
        return None

    def close(self) -> None:
        self._iso.close()


class MountedDrive(DirectoryDrive):
    """A device or image mounted read-only in a temporary directory, unmounted on close."""

    def __init__(self, source: Path) -> None:
        self._mountpoint = tempfile.mkdtemp(prefix="boshreg-config-drive-")
        result = subprocess.run(
            ["mount", "-o", "ro", str(source), self._mountpoint],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            os.rmdir(self._mountpoint)
            raise DriveError(f"cannot mount {source}: {result.stderr.strip() or result.returncode}")
        super().__init__(Path(self._mountpoint))
        self.where = f"{source} (mounted at {self._mountpoint})"

    def close(self) -> None:
        subprocess.run(["umount", self._mountpoint], capture_output=True, timeout=30, check=False)
        os.rmdir(self._mountpoint)


def find_by_label() -> Path | None:
    """The block device labelled config-2, from udev's by-label links or blkid."""
    if BY_LABEL.exists():
        return BY_LABEL.resolve()
    try:
        result = subprocess.run(
            ["blkid", "-t", f"LABEL={LABEL}", "-o", "device"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    devices = result.stdout.split()
    return Path(devices[0]) if devices else None


def open_drive(path: str | None) -> Drive:
    """The drive at ``path`` (a directory, an image, a device), or the one labelled config-2."""
    if path is None:
        device = find_by_label()
        if device is None:
            raise DriveNotFound(f"no block device labelled {LABEL} (looked at {BY_LABEL} and blkid)")
        target = device
    else:
        target = Path(path)
        if not target.exists():
            raise DriveNotFound(f"{target} does not exist")
    if target.is_dir():
        return DirectoryDrive(target)
    try:
        import pycdlib  # optional, and only needed for images and devices
    except ImportError:
        if os.geteuid() == 0:
            return MountedDrive(target)
        raise DriveError(
            f"cannot read {target} without mounting it: install pycdlib (pip install 'boshreg[agent]') or run as root"
        ) from None
    return IsoDrive(target, pycdlib)
