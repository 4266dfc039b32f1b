"""Authentication: an API key becomes a tenant and a principal; nothing else can choose them."""

from __future__ import annotations

import hashlib
import hmac

import falcon

from asyncgate.errors import Problem
from asyncgate.settings import Identity, Settings

PUBLIC_PATHS = frozenset({"/v1/health"})
DEV_IDENTITY = Identity("default", "service:dev")


class KeyRing:
    """Known keys by SHA-256 digest. Keys themselves are never held."""

    def __init__(self, settings: Settings) -> None:
        self._by_digest = {bytes.fromhex(k): v for k, v in settings.keys.items()}
        self._insecure_dev = settings.insecure_dev

    def identify(self, presented: str | None) -> tuple[Identity | None, str | None]:
        """(identity, key digest hex) for a presented key; identity is None if it is unknown.

        The dictionary is keyed by SHA-256 digests, so lookup timing can reveal at most a
        digest prefix, which says nothing about any key; the match itself is confirmed with
        ``hmac.compare_digest``.
        """
        if presented is None:
            return (DEV_IDENTITY, None) if self._insecure_dev else (None, None)
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        identity = self._by_digest.get(digest)
        stored = digest if identity is not None else bytes(32)
        if identity is not None and hmac.compare_digest(stored, digest):
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
