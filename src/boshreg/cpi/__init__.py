"""The CPI side: the create-server bootstrap for a delivery mode, and inspection of captured requests."""

from boshreg.cpi.delivery import Bootstrap, Delivery, build_bootstrap
from boshreg.cpi.inspect import Inspection, RequestError, inspect_request

__all__ = [
    "Bootstrap",
    "Delivery",
    "Inspection",
    "RequestError",
    "build_bootstrap",
    "inspect_request",
]
