"""A short-lived, per-process cache of verified API keys: a polling client costs no key query per request.

Entries are keyed by the key's HMAC (the plain key is never kept), hold a detached snapshot of the row and
expire after `ttl` seconds, so a key revoked with `sgft keys revoke` stops working within `ttl` seconds in
every API process. Failed verifications are never cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from core.keys import hash_key
from core.models import ApiKey


class KeyCache:
    """At most `size` live keys, each trusted for `ttl` seconds after its last database check."""

    def __init__(self, secret_key: str, ttl: float = 5.0, size: int = 10_000) -> None:
        self.secret_key = secret_key
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, plain: str) -> ApiKey | None:
        """The cached key row for `plain`, or None (unknown or expired: verify against the database)."""
        digest = hash_key(plain, self.secret_key)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, plain: str, row: ApiKey) -> None:
        """Remember a key the database just verified (a detached copy: safe to share across threads)."""
        snapshot = ApiKey(id=row.id, tenant_id=row.tenant_id, prefix=row.prefix, key_hash=row.key_hash)
        with self._lock:
            self._entries[hash_key(plain, self.secret_key)] = (time.monotonic() + self.ttl, snapshot)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
