"""Who can reach the server: addresses to bind and the APIs kept for the operator.

By default Triton listens on every interface (0.0.0.0) and any client may load or unload models, list the
repository, change logging or tracing. `make serve` instead binds HTTP, gRPC and metrics to 127.0.0.1 and
restricts the model-repository, logging and trace APIs (Triton's ``--http-restricted-api`` /
``--grpc-restricted-protocol``) to requests carrying a header with a key that is generated per start and
written, readable by its owner only, to ``.triton/admin-key``. ``HOST=0.0.0.0`` opens the server to the
network, with a warning; the restrictions stay.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

ADMIN_HEADER = "triton-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # over gRPC Triton expects the key under this name
RESTRICTED = ("model-repository", "logging", "trace")
DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> str:
    """The address, or ValueError naming what to pass."""
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"HOST={host!r} is not an IP address: use 127.0.0.1 (default) or 0.0.0.0 "
                             "(every interface)") from None
    return host


def write_admin_key(state: Path) -> str:
    """A fresh random key in state/admin-key (mode 0600), replaced atomically; returns it."""
    state.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    tmp = state / "admin-key.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    tmp.replace(state / "admin-key")
    return key


def access_args(host: str, key: str) -> list[str]:
    """tritonserver arguments: bind every endpoint to `host`, keep the RESTRICTED APIs behind the key."""
    apis = ",".join(RESTRICTED)
    return [f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
            f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}"]


def exposure_warning(host: str) -> str | None:
    if is_loopback(host):
        return None
    return (f"warning: Triton listens on {host}: anyone who can reach this machine can send inference requests "
            f"and read metrics (model control stays behind the admin key). Put it behind a firewall or a proxy "
            f"with authentication, or use the default HOST=127.0.0.1.")
