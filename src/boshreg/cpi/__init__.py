"""The CPI side: the create-server bootstrap for a delivery mode, and inspection of captured requests."""

from boshreg.cpi.delivery import PERSONALITY_PATH, Bootstrap, Delivery, build_bootstrap
from boshreg.cpi.inspect import Inspection, RequestError, inspect_request

__all__ = [
    "PERSONALITY_PATH",
    "Bootstrap",
    "Delivery",
    "Inspection",
    "RequestError",
    "build_bootstrap",
    "inspect_request",
]
