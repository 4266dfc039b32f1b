"""/v1/health, /v1/metrics and the served contract /v1/openapi.yaml."""

from __future__ import annotations

import falcon

from asyncgate import __version__
from asyncgate.metrics import CONTENT_TYPE, Metrics
from asyncgate.resources.base import send_json
from asyncgate.storage import Dialect


class HealthResource:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        healthy = await self.dialect.ping()
        send_json(
            resp,
            {
                "status": "healthy" if healthy else "unhealthy",
                "storage": {"dialect": self.dialect.name, "reachable": healthy},
                "version": __version__,
            },
            200 if healthy else 503,
        )


class MetricsResource:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self.metrics.render()


class OpenAPIResource:
    def __init__(self, document: bytes) -> None:
        self.document = document

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/yaml"
        resp.data = self.document
