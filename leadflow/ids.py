"""Stable ids: the same name in the same namespace always gives the same id.

`stable_id` is `str(uuid.uuid5(namespace, name))` without building a `UUID`
object, which costs more than the hash itself; lead, event, transition and
assignment ids are made on every message of the hot path.
"""

from __future__ import annotations

import hashlib
import uuid


def table_key(kind: str, value: str) -> str:
    """An identity-index key: `email:anna@contoso-de.com`, `company:contoso`."""
    return f"{kind}:{value}"


def stable_id(namespace: uuid.UUID, name: str) -> str:
    """The RFC 9562 version-5 UUID of `name` in `namespace`, as text."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
