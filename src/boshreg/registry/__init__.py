"""The registry server: a drop-in for the original BOSH registry (routes, JSON, auth, config, table)."""
