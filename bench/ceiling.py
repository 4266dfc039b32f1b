"""The HTTP ceiling: Falcon and uvicorn serving the life-cycle endpoints with no storage at all.

    uvicorn bench.ceiling:app --loop uvloop --http httptools

bench/run.py serves this beside AsyncGate and drives it with the same wrk life-cycle script, so
the unbatched rate can be read against what the HTTP stack alone allows on the same machine in
the same run (PERFORMANCE.md's "Falcon + uvicorn ... with no storage" row). Each endpoint parses
its JSON body, checks the bearer key, and answers a body of AsyncGate's shape and size with
fresh ids; nothing is validated, stored or looked up.
"""

from __future__ import annotations

import hmac
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon
import falcon.asgi
import orjson

KEY = os.environ.get("CEILING_KEY", "")
PRINCIPAL = "service:bench"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _task(body: dict[str, Any], lease: dict[str, Any] | None = None) -> dict[str, Any]:
    now = _now()
    return {
        "task_id": str(uuid.uuid4()),
        "type": body.get("type", "cycle"),
        "payload": body.get("payload", {}),
        "principal": PRINCIPAL,
        "created_by": PRINCIPAL,
        "priority": 0,
        "idempotency_key": None,
        "state": "ACTIVE" if lease else "PENDING",
        "lease": lease,
        "lease_generation": 1 if lease else 0,
        "obligation_receipt_id": str(uuid.uuid4()),
        "obligation_open": True,
        "created_at": now,
        "updated_at": now,
    }


class _Endpoint:
    status = falcon.HTTP_201

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not hmac.compare_digest(req.get_header("Authorization", default=""), f"Bearer {KEY}"):
            raise falcon.HTTPUnauthorized()
        body = orjson.loads(await req.stream.read())
        resp.status = self.status
        resp.content_type = "application/json"
        resp.data = orjson.dumps(self.answer(body))

    def answer(self, body: dict[str, Any]) -> Any:
        raise NotImplementedError


class Tasks(_Endpoint):
    def answer(self, body: dict[str, Any]) -> Any:
        return _task(body)


class Leases(_Endpoint):
    status = falcon.HTTP_200

    def answer(self, body: dict[str, Any]) -> Any:
        expires = (datetime.now(UTC) + timedelta(seconds=600)).isoformat()
        lease = {
            "lease_id": str(uuid.uuid4()),
            "worker": body.get("worker"),
            "expires_at": expires,
            "lease_generation": 1,
        }
        grant = {"lease_id": lease["lease_id"], "lease_generation": 1, "expires_at": expires}
        return [{**grant, "task": _task({"type": (body.get("types") or ["cycle"])[0]}, lease)}]


class Receipts(_Endpoint):
    def answer(self, body: dict[str, Any]) -> Any:
        receipt = {
            "receipt_id": str(uuid.uuid4()),
            "type": body.get("type"),
            "task_id": body.get("task_id"),
            "from_principal": PRINCIPAL,
            "to_principal": PRINCIPAL,
            "lease_id": body.get("lease_id"),
            "parent_receipt_ids": body.get("parent_receipt_ids", []),
            "body": body.get("body", {}),
            "artifacts": body.get("artifacts", []),
            "delivery_proof": body.get("delivery_proof"),
            "created_at": _now(),
        }
        return {"receipt": receipt, "terminated": receipt["parent_receipt_ids"], "anomalies": []}


app = falcon.asgi.App()
app.add_route("/v1/tasks", Tasks())
app.add_route("/v1/leases", Leases())
app.add_route("/v1/receipts", Receipts())
