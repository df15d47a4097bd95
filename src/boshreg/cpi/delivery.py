"""How the user data reaches the VM: the nova create-server fragment for each delivery mode.

``metadata`` (the default) leaves the VM free to move: the metadata service serves user data wherever
the VM runs. ``config-drive`` and ``legacy`` tie the guest to a drive built on its hypervisor; they
exist for clouds without a reachable metadata service, and for reproducing what the old CPI sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from boshreg import userdata
from boshreg.cpi.costs import DRIVE_DEPENDENCY, PERSONALITY_COST, PINNED, PORTABLE
from boshreg.endpoint import Endpoint

PERSONALITY_PATH = "/var/vcap/bosh/user_data.json"


class Delivery(enum.StrEnum):
    """Where the CPI puts the user data."""

    METADATA = "metadata"  # nova user_data only
    CONFIG_DRIVE = "config-drive"  # user_data and config_drive: true
    LEGACY = "legacy"  # user_data and a personality file, as the old CPI did


@dataclass(frozen=True)
class Bootstrap:
    """The user data document and how it is delivered; renders the nova and openstacksdk forms."""

    user_data: dict[str, Any]
    delivery: Delivery

    def nova_fragment(self) -> dict[str, Any]:
        """The part of the nova ``POST /servers`` body under ``server`` that carries the user data."""
        encoded = userdata.encode_base64(self.user_data)
        fragment: dict[str, Any] = {"user_data": encoded}
        if self.delivery is Delivery.LEGACY:
            fragment["personality"] = [{"path": PERSONALITY_PATH, "contents": encoded}]
        else:
            fragment["config_drive"] = self.delivery is Delivery.CONFIG_DRIVE
        return fragment

    def openstacksdk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``conn.compute.create_server(name=..., image_id=..., **these)``.

        The compute proxy's Server attributes carry the nova body's names and expect ``user_data``
        already base64-encoded, so the two forms hold the same values.
        """
        return self.nova_fragment()

    @property
    def verdict(self) -> str:
        """``portable``, or ``pinned: ...`` with what the drive costs."""
        if self.delivery is Delivery.METADATA:
            return PORTABLE
        if self.delivery is Delivery.CONFIG_DRIVE:
            return f"{PINNED}: depends on config drive (because config_drive is true: {DRIVE_DEPENDENCY})"
        return (
            f"{PINNED}: depends on config drive (because the user data is also injected as "
            f"{PERSONALITY_PATH}: {PERSONALITY_COST})"
        )


def build_bootstrap(user_data: dict[str, Any], delivery: Delivery = Delivery.METADATA) -> Bootstrap:
    """Check the document against nova's limits now, before any API call is made."""
    userdata.encode(user_data)  # raises UserDataError when too large
    return Bootstrap(user_data=user_data, delivery=delivery)


def render(
    name: str,
    *,
    endpoint: Endpoint | None = None,
    settings: dict[str, Any] | None = None,
    dns: list[str] | None = None,
    public_key: str | None = None,
    delivery: Delivery = Delivery.METADATA,
) -> Bootstrap:
    """The bootstrap for one VM, as the CPI builds it.

    DNS servers given explicitly win; otherwise, in registry-less mode, they come from the settings'
    networks (the first that has any), as the CPI takes them from the network spec.
    """
    networks: dict[str, Any] = {}
    if dns:
        networks = {"given": {"dns": dns}}
    elif settings is not None and isinstance(settings.get("networks"), dict):
        networks = settings["networks"]
    document = userdata.build_user_data(name, endpoint, networks, public_key, settings)
    return build_bootstrap(document, delivery)
