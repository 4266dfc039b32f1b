"""/v1/receipts: write (one or a batch), read one, query the ledger."""

from __future__ import annotations

from typing import Any

import falcon

from asyncgate.errors import invalid
from asyncgate.receipts import check_type
from asyncgate.resources.base import Resource, link_next, send_json, whole_numbers
from asyncgate.validation import (
    parse_uuid,
    path_id,
    read_json,
    text_param,
    time_param,
    uuid_param,
    validate,
)


def normalize(spec: dict[str, Any]) -> dict[str, Any]:
    """Canonical ids (lower case, parents de-duplicated in order) before anything compares them."""
    spec["task_id"] = parse_uuid(spec["task_id"], "task_id")
    spec["parent_receipt_ids"] = list(
        dict.fromkeys(parse_uuid(p, "parent_receipt_ids") for p in spec["parent_receipt_ids"])
    )
    spec["artifacts"] = [whole_numbers(artifact, "size_bytes") for artifact in spec["artifacts"]]
    for name in ("lease_id", "receipt_id"):
        if spec.get(name):
            spec[name] = parse_uuid(spec[name], name)
    return spec


def refuse_unwritable_types(data: Any, batch: bool) -> None:
    """Say why a receipt type is refused (unknown, or AsyncGate's own), before the schema's enum.

    The schema lists the client types, so the contract is exact; this keeps the SPEC's more
    telling codes (unknown_receipt_type, reserved_receipt_type) for the same 422.
    """
    items = data.get("receipts") if batch and isinstance(data, dict) else [data]
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            check_type(item["type"], f"receipts.{index}." if batch else "")


class ReceiptWriter(Resource):
    async def receipts_body(self, req: falcon.Request, schema: str, batch: bool) -> Any:
        data = await read_json(req, self.settings.max_body_bytes)
        refuse_unwritable_types(data, batch)
        return validate(schema, data)


class ReceiptsResource(ReceiptWriter):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = normalize(await self.receipts_body(req, "receipt-create.json", batch=False))
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


class ReceiptBatchResource(ReceiptWriter):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        batch = await self.receipts_body(req, "receipt-batch-create.json", batch=True)
        specs = [normalize(spec) for spec in batch["receipts"]]
        results = await self.ledger.write_receipts(self.identity(req), specs, batch=True)
        send_json(resp, {"results": [result.as_json() for result in results]}, 201)


class ReceiptResource(Resource):
    async def on_get(self, req: falcon.Request, resp: falcon.Response, receipt_id: str) -> None:
        receipt = await self.ledger.get_receipt(self.identity(req), path_id(receipt_id, "receipt"))
        send_json(resp, receipt)
