# -*- test-case-name: tests.test_cluster -*-
"""
Salted, slow password hashes for conference passwords that leave the process.

A conference of a cluster is written to the shared directory (Redis) so that
another node can host it (docs/cluster.md); its passwords go there as
PBKDF2-SHA256 hashes, never in clear.  The node that hosts it compares the
passwords members give with L{matches}, which takes constant time and keeps
the answers of recent comparisons (keyed by a digest under a per-process key,
never the password) so that a webinar's thousand joins with one password cost
one PBKDF2 run, not a thousand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections import OrderedDict

PREFIX = "pbkdf2-sha256$"
ITERATIONS = 20_000
_CACHE_SIZE = 4096
_cacheKey = os.urandom(32)
_cache: OrderedDict[bytes, bool] = OrderedDict()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hashPassword(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """
    The stored form of a password: C{pbkdf2-sha256$ITER$SALT$HASH}.
    C{""} (no password set) stays C{""}.
    """
    if not password:
        return ""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{PREFIX}{iterations}${_b64(salt)}${_b64(digest)}"


def isHashed(stored: str) -> bool:
    """Is this a stored hash (rather than a password in clear)?"""
    return stored.startswith(PREFIX)


def matches(given: str, stored: str) -> bool:
    """
    Does the password given match the stored one (a hash or clear text)?
    Constant time in the comparison; a malformed hash matches nothing.
    """
    givenBytes = given.encode("utf-8")
    if not isHashed(stored):
        return hmac.compare_digest(givenBytes, stored.encode("utf-8"))
    key = hmac.new(_cacheKey, stored.encode("ascii", "replace") + b"\0" + givenBytes,
                   hashlib.sha256).digest()
    known = _cache.get(key)
    if known is not None:
        _cache.move_to_end(key)
        return known
    try:
        iterations, salt, expected = stored[len(PREFIX):].split("$")
        digest = hashlib.pbkdf2_hmac("sha256", givenBytes, base64.b64decode(salt),
                                     int(iterations))
        result = hmac.compare_digest(digest, base64.b64decode(expected))
    except (ValueError, TypeError):
        result = False
    _cache[key] = result
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return result
