"""/v1/tasks: create (one or a batch), read one, list."""

from __future__ import annotations

import falcon

from asyncgate.resources.base import Resource, link_next, send_json, whole_numbers
from asyncgate.validation import choice_param, path_id, text_param, uuid_param

STATES = ("PENDING", "ACTIVE", "COMPLETED", "FAILED", "CANCELLED")


class TasksResource(Resource):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = whole_numbers(await self.body(req, "task-create.json"), "priority")
        [(task, created)] = await self.ledger.create_tasks(self.identity(req), [spec], batch=False)
        send_json(resp, task, 201 if created else 200)

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = self.page_limit(req)
        page = await self.ledger.list_tasks(
            self.identity(req),
            state=choice_param(req, "state", STATES),
            task_type=text_param(req, "type"),
            after=uuid_param(req, "after"),
            limit=limit,
        )
        link_next(req, resp, page, "task_id", limit)
        send_json(resp, page)


class TaskBatchResource(Resource):
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        batch = await self.body(req, "task-batch-create.json")
        specs = [whole_numbers(spec, "priority") for spec in batch["tasks"]]
        results = await self.ledger.create_tasks(self.identity(req), specs, batch=True)
        send_json(resp, {"tasks": [task for task, _ in results]}, 201)


class TaskResource(Resource):
    async def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        task = await self.ledger.get_task(self.identity(req), path_id(task_id, "task"))
        send_json(resp, task)
