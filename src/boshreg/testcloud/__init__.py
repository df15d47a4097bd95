"""A local OpenStack stand-in: a Nova-compatible metadata service and config drive images."""
