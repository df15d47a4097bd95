"""The IaaS address check of the original registry: an unauthenticated GET is answered only when it
comes from an address the VM has, as the cloud reports it.

OpenStack (openstacksdk): the server found by its name, fixed and floating addresses. AWS (boto3): the
instance by its id, private and public or elastic addresses of every interface. Answers are cached for
``cloud.address_cache_seconds``; a cloud that cannot be asked is ``IaasUnavailable`` (503), never a 500.
Both SDKs are imported only when the plugin is configured.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from boshreg.errors import BoshregError
from boshreg.registry.config import AwsConfig, CloudConfig, OpenStackConfig

_INTERFACES = {"publicURL": "public", "internalURL": "internal", "adminURL": "admin"}


class IaasSetupError(BoshregError):
    """The configured cloud's SDK is not installed; the message says what to install."""


class IaasUnavailable(Exception):
    """The cloud could not be asked; the message says which and why (no credentials in it)."""


class InstanceUnknown(Exception):
    """The cloud has no instance under that registry key."""


class InstanceAmbiguous(Exception):
    """Several instances answer to that registry key (Nova allows duplicate names): trusting any is unsafe."""


class AddressLookup(Protocol):
    def addresses(self, instance_key: str) -> set[str]:
        """Every address the cloud reports for the instance; InstanceUnknown or IaasUnavailable otherwise."""
        ...


def mismatch_message(client: str, addresses: set[str]) -> str:
    """The original registry's words, so tools that match on them keep working."""
    return f"Instance IP mismatch, expected IP is `{client}', actual IP(s): `{', '.join(sorted(addresses))}'"


class OpenStackAddresses:
    """Servers by name through openstacksdk (a connection made on first use, then reused)."""

    def __init__(self, config: OpenStackConfig, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self._connection: Any = None
        self._lock = threading.Lock()

    def addresses(self, instance_key: str) -> set[str]:
        import keystoneauth1.exceptions
        import openstack.exceptions

        try:
            servers = list(self._connect().compute.servers(details=True, name=f"^{re.escape(instance_key)}$"))
        except (openstack.exceptions.SDKException, keystoneauth1.exceptions.ClientException) as exc:
            with self._lock:
                self._connection = None  # a new session next time (expired token, changed catalog)
            raise IaasUnavailable(f"OpenStack at {self.config.auth_url}: {_first_line(exc)}") from None
        found = [server for server in servers if server.name == instance_key]
        if not found:
            raise InstanceUnknown(f"OpenStack has no server named {instance_key}")
        if len(found) > 1:  # a second server named like the victim must not read the victim's settings
            raise InstanceAmbiguous(
                f"OpenStack has {len(found)} servers named {instance_key} ({', '.join(sorted(s.id for s in found))}); "
                "unauthenticated reads of its settings are refused: rename the duplicates, or give VMs credentials"
            )
        return {
            str(entry["addr"])
            for server in found
            for network in (server.addresses or {}).values()
            for entry in network
            if entry.get("addr")
        }

    def _connect(self) -> Any:
        with self._lock:
            if self._connection is None:
                import openstack.connection

                config = self.config
                self._connection = openstack.connection.Connection(
                    auth_url=config.auth_url,
                    username=config.username,
                    password=config.api_key,
                    project_name=config.project or config.tenant,
                    user_domain_name=config.user_domain_name or config.domain or "Default",
                    project_domain_name=config.project_domain_name or config.domain or "Default",
                    region_name=config.region,
                    interface=_INTERFACES.get(config.endpoint_type, config.endpoint_type),
                    timeout=self.timeout,
                    **config.connection_options,
                )
            return self._connection


class AwsAddresses:
    """Instances by id through boto3's EC2 client."""

    def __init__(self, config: AwsConfig, timeout: float) -> None:
        import boto3
        import botocore.config

        self.config = config
        self._ec2 = boto3.client(
            "ec2",
            region_name=config.region,
            endpoint_url=config.ec2_endpoint,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=botocore.config.Config(
                connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": config.max_retries + 1}
            ),
        )

    def addresses(self, instance_key: str) -> set[str]:
        import botocore.exceptions

        try:
            answer = self._ec2.describe_instances(InstanceIds=[instance_key])
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                raise InstanceUnknown(f"AWS has no instance {instance_key}") from None
            raise IaasUnavailable(f"AWS EC2 in {self.config.region}: {code or _first_line(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise IaasUnavailable(f"AWS EC2 in {self.config.region}: {_first_line(exc)}") from None
        instances = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            raise InstanceUnknown(f"AWS has no instance {instance_key}")
        found: set[str] = set()
        for instance in instances:
            found.update(filter(None, (instance.get("PrivateIpAddress"), instance.get("PublicIpAddress"))))
            for interface in instance.get("NetworkInterfaces", []):
                for private in interface.get("PrivateIpAddresses", []):
                    found.update(
                        filter(None, (private.get("PrivateIpAddress"), private.get("Association", {}).get("PublicIp")))
                    )
        return found


class CachedAddresses:
    """Remembers each instance's answer for ``ttl`` seconds, "unknown" and "ambiguous" too: one cloud call
    per VM boot, not per GET, and a stranger asking for made-up names cannot spend the cloud's rate limit
    faster than the registry's throttle lets it."""

    def __init__(
        self,
        lookup: AddressLookup,
        ttl: float,
        now: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self._now = now
        self._observe = observe  # each real cloud call: its outcome and seconds (the metrics)
        self._cache: dict[str, tuple[float, set[str] | Exception]] = {}

    def addresses(self, instance_key: str) -> set[str]:
        cached = self._cache.get(instance_key)
        if cached is not None and cached[0] > self._now():
            answer = cached[1]
        else:
            started, outcome = time.perf_counter(), "unavailable"
            try:
                answer = self.lookup.addresses(instance_key)
                outcome = "found"
            except (InstanceUnknown, InstanceAmbiguous) as exc:
                answer = exc
                outcome = "unknown" if isinstance(exc, InstanceUnknown) else "ambiguous"
            finally:
                if self._observe is not None:
                    self._observe(outcome, time.perf_counter() - started)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[instance_key] = (self._now() + self.ttl, answer)
        if isinstance(answer, Exception):
            raise answer
        return answer


def address_lookup(
    cloud: CloudConfig, timeout: float, observe: Callable[[str, float], None] | None = None
) -> AddressLookup:
    """The cached lookup for the configured plugin; ``observe`` hears of each real cloud call."""
    inner: AddressLookup
    module = "openstack" if cloud.plugin == "openstack" else "boto3"
    try:
        __import__(module)
    except ImportError:
        raise IaasSetupError(
            f"cloud.plugin {cloud.plugin} needs the {module} package: pip install 'boshreg[cloud]'"
        ) from None
    if cloud.plugin == "openstack":
        assert cloud.openstack is not None  # checked when the config was loaded
        inner = OpenStackAddresses(cloud.openstack, timeout)
    else:
        assert cloud.aws is not None
        inner = AwsAddresses(cloud.aws, timeout)
    return CachedAddresses(inner, cloud.address_cache_seconds, observe=observe)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
