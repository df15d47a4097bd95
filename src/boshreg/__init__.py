"""boshreg: the bootstrap path of BOSH-managed VMs on OpenStack and AWS."""

__version__ = "0.1.0"
