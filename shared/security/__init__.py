"""Who may call: API keys at the edge, TLS on its port, mTLS (or a mesh token) inside.

    activate(Security(settings.security, "ingest"))   # `clawmesh serve ingest` does this
    active().keys().authenticate("Bearer cmk_…")      # -> the key's tenant
    write_dev_certs(Path("certs"), NAMES)             # `clawmesh certs --out certs`

- ``keys``: API keys, stored as hashes, rotation, the keys file (README "Security").
- ``certs``: a development CA and per-service certificates (cert-manager's file names).
- ``tls``: gRPC credentials from those files; server certificates reload when renewed.
- ``runtime``: the process's identity and settings, as servers and channels use them.

The interceptors that enforce it are in ``shared.rpc.interceptors.auth``.
"""

from clawmesh.shared.security.keys import KeyRing, KeyStore, SecurityError, hash_key, new_key
from clawmesh.shared.security.runtime import (
    AUTHORIZATION,
    MESH_TOKEN,
    Security,
    activate,
    activated,
    active,
    is_activated,
)

__all__ = ["AUTHORIZATION", "MESH_TOKEN", "KeyRing", "KeyStore", "Security", "SecurityError", "activate",
           "activated", "active", "hash_key", "is_activated", "new_key"]
