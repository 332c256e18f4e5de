"""Prefect flows (thin wrappers over stages) and the `aunet` command line.

Settings for a machine without a Prefect server: the ephemeral server needs longer than
Prefect's 20 s default to create its database on a small machine; no telemetry. Each is a
default only: a user's own environment wins.
"""
import os

_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
for _k, _v in _PREFECT_DEFAULTS.items():
    os.environ.setdefault(_k, _v)
