"""The endpoint a VM gets in its user data: its own read credential, not the admin's.

With the admin pair in every VM's user data, any process on any VM can read and overwrite every VM's
settings. A per-VM credential reads one VM's settings and nothing else. The CPI side computes it when
it knows the registry's instance secret (and the instance's credential generation: 0 unless its settings
were deleted or its credential revoked before), or asks the registry for it.
"""

from __future__ import annotations

from dataclasses import replace

from boshreg.bootstrap.credentials import credential_problem, instance_token
from boshreg.bootstrap.endpoint import Endpoint
from boshreg.errors import BoshregError


class CredentialError(BoshregError):
    """The VM cannot have a per-VM credential (its id has a ':')."""


def per_vm_endpoint(
    admin: Endpoint, instance_id: str, *, secret: str | None = None, generation: int = 0, cacert: str | None = None
) -> Endpoint:
    """``admin`` with the VM's own credential in place of the admin's."""
    problem = credential_problem(instance_id)
    if problem is not None:
        raise CredentialError(problem)
    if secret is not None:
        user, password = instance_id, instance_token(secret, instance_id, generation)
    else:
        from boshreg.client import RegistryClient  # not in `serve` (test_structure)

        with RegistryClient(admin, cacert=cacert) as client:
            user, password = client.instance_credentials(instance_id)
    return replace(admin, user=user, password=password)
