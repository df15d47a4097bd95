"""The contract between CPI, cloud, agent and registry, as data and pure functions.

Standard library only (it ships into VMs with the agent): endpoint parsing and warnings, the user data
document, per-VM credentials, the registry key rule, the cloud's facts (``nova``) and the verdict words.
"""
