"""Authentication: an API key becomes a tenant and a principal; nothing else can choose them."""

from __future__ import annotations

import hashlib
import hmac

import falcon

from asyncgate.errors import Problem
from asyncgate.settings import Identity, Settings

PUBLIC_PATHS = frozenset({"/v1/health"})
DEV_IDENTITY = Identity("default", "service:dev")


# Keys are bucketed by this many leading bytes of their digest; the full digest is then
# compared in constant time. Bucket lookup timing can reveal only a digest prefix.
BUCKET_BYTES = 4


class KeyRing:
    """Known keys by SHA-256 digest. Keys themselves are never held."""

    def __init__(self, settings: Settings) -> None:
        self._buckets: dict[bytes, list[tuple[bytes, Identity]]] = {}
        for digest_hex, identity in settings.keys.items():
            digest = bytes.fromhex(digest_hex)
            self._buckets.setdefault(digest[:BUCKET_BYTES], []).append((digest, identity))
        self._insecure_dev = settings.insecure_dev

    def identify(self, presented: str | None) -> tuple[Identity | None, str | None]:
        """(identity, key digest hex) for a presented key; identity is None if it is unknown."""
        if presented is None:
            return (DEV_IDENTITY, None) if self._insecure_dev else (None, None)
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        for stored, identity in self._buckets.get(digest[:BUCKET_BYTES], ()):
            if hmac.compare_digest(stored, digest):
                return identity, digest.hex()
        if self._insecure_dev:
            return DEV_IDENTITY, digest.hex()
        return None, digest.hex()


def bearer_token(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class AuthMiddleware:
    """Resolves the caller's identity from the key; never refuses by itself.

    ``RequireIdentityMiddleware`` refuses later, so that the rate limiter, which runs
    between the two, counts failed attempts per client address before the 401 is sent.
    """

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.identity = None
        req.context.key_digest = None
        if req.path in PUBLIC_PATHS:
            return
        identity, digest = self.keys.identify(bearer_token(req))
        req.context.identity = identity
        req.context.key_digest = digest


class RequireIdentityMiddleware:
    """Refuses every request but /v1/health that carries no valid key, unknown routes included."""

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in PUBLIC_PATHS or req.context.identity is not None:
            return
        raise Problem(
            401,
            "unauthorized",
            "send a valid API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="asyncgate"'},
        )
