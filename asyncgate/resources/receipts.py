"""/v1/receipts: write (one or a batch), read one, query the ledger."""

from __future__ import annotations

from typing import Any

import falcon

from asyncgate.errors import invalid
from asyncgate.resources.base import Resource, link_next, send_json
from asyncgate.validation import parse_uuid, path_id, text_param, time_param, uuid_param


def normalize(spec: dict[str, Any]) -> dict[str, Any]:
    """Canonical ids (lower case, parents de-duplicated in order) before anything compares them."""
    spec["task_id"] = parse_uuid(spec["task_id"], "task_id")
    spec["parent_receipt_ids"] = list(
        dict.fromkeys(parse_uuid(p, "parent_receipt_ids") for p in spec["parent_receipt_ids"])
    )
    for name in ("lease_id", "receipt_id"):
        if spec.get(name):
            spec[name] = parse_uuid(spec[name], name)
    return spec


class ReceiptsResource(Resource):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = normalize(await self.body(req, "receipt-create.json"))
        [result] = await self.ledger.write_receipts(self.identity(req), [spec], batch=False)
        send_json(resp, result.as_json(), 200 if result.replayed else 201)

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = self.page_limit(req)
        type_filter = text_param(req, "type")
        since, until = time_param(req, "since"), time_param(req, "until")
        if since and until and since > until:
            raise invalid("until", "until must not be before since")
        filters = {
            "task_id": uuid_param(req, "task_id"),
            "type": None,
            "type_prefix": None,
            "since": since,
            "until": until,
        }
        if type_filter is not None and type_filter.endswith("*"):
            filters["type_prefix"] = type_filter[:-1]
        else:
            filters["type"] = type_filter
        page = await self.ledger.list_receipts(
            self.identity(req), filters, uuid_param(req, "after"), limit
        )
        link_next(req, resp, page, "receipt_id", limit)
        send_json(resp, page)


class ReceiptBatchResource(Resource):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        batch = await self.body(req, "receipt-batch-create.json")
        specs = [normalize(spec) for spec in batch["receipts"]]
        results = await self.ledger.write_receipts(self.identity(req), specs, batch=True)
        send_json(resp, {"results": [result.as_json() for result in results]}, 201)


class ReceiptResource(Resource):
    async def on_get(self, req: falcon.Request, resp: falcon.Response, receipt_id: str) -> None:
        receipt = await self.ledger.get_receipt(self.identity(req), path_id(receipt_id, "receipt"))
        send_json(resp, receipt)
