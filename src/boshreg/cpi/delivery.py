"""How the user data reaches the VM: the nova create-server fragment for each delivery mode.

``metadata`` (the default) leaves the VM free to move: the metadata service serves user data wherever
the VM runs. ``config-drive`` attaches a drive (the stemcell's agent then reads the drive first: fed by
it, with its costs); ``legacy`` also injects the user data as a personality file, as the old CPI did.
The verdict is the one ``inspect`` and ``agent resolve`` reach for the same request.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from boshreg.bootstrap import userdata
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.bootstrap.nova import PERSONALITY_PATH
from boshreg.bootstrap.verdict import Verdict
from boshreg.cpi.inspect import inspect_request


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
    def verdict(self) -> Verdict:
        """What the stemcell's agent will make of this request: the verdict ``inspect`` gives it too."""
        return inspect_request({"server": self.nova_fragment()}).verdict


def build_bootstrap(
    user_data: dict[str, Any], delivery: Delivery = Delivery.METADATA, cloud: str = "openstack"
) -> Bootstrap:
    """Check the document against the cloud's limits now, before any API call is made."""
    userdata.encode(user_data, cloud)  # raises UserDataError when too large
    return Bootstrap(user_data=user_data, delivery=delivery)


def render(
    name: str,
    *,
    endpoint: Endpoint | None = None,
    settings: dict[str, Any] | None = None,
    dns: list[str] | None = None,
    public_key: str | None = None,
    delivery: Delivery = Delivery.METADATA,
    cloud: str = "openstack",
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
    return build_bootstrap(document, delivery, cloud)
