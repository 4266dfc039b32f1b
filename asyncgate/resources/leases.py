"""/v1/leases: claim, renew, release."""

from __future__ import annotations

import falcon

from asyncgate.resources.base import Resource, send_json, whole_numbers
from asyncgate.validation import path_id


class LeasesResource(Resource):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        claim = whole_numbers(await self.body(req, "lease-claim.json"), "max_tasks", "ttl_seconds")
        granted = await self.ledger.claim(
            self.identity(req),
            worker=claim["worker"],
            types=claim.get("types"),
            max_tasks=claim["max_tasks"],
            ttl_seconds=claim.get("ttl_seconds") or self.settings.lease_default_ttl_seconds,
            wait_seconds=claim["wait_seconds"],
        )
        send_json(resp, granted)


class LeaseRenewResource(Resource):
    async def on_post(self, req: falcon.Request, resp: falcon.Response, lease_id: str) -> None:
        lease_id = path_id(lease_id, "lease")
        renew = whole_numbers(
            await self.body(req, "lease-renew.json", optional=True), "ttl_seconds"
        )
        send_json(
            resp, await self.ledger.renew(self.identity(req), lease_id, renew.get("ttl_seconds"))
        )


class LeaseResource(Resource):
    async def on_delete(self, req: falcon.Request, resp: falcon.Response, lease_id: str) -> None:
        await self.ledger.release(self.identity(req), path_id(lease_id, "lease"))
        resp.status = 204
