-- A task's obligation is found through its receipt, not through an index on tasks. The
-- obligation is the task's task.assigned receipt (receipt_id = obligation_receipt_id, task_id =
-- the task), written in the same statement as the task, so the receipts' primary key already
-- finds it and already keeps obligation ids unique per tenant. tasks_by_obligation was a second,
-- unique, copy of that: every task version (creation, claim, settle: tasks are never updated
-- in place, as their state is indexed) inserted into it and checked it for duplicates. Without
-- it, PostgreSQL's CPU per batched life cycle measured 164-170 against 177-178 us.
-- During a rolling deploy, instances still on the previous release find obligations by reading
-- the tenant's tasks until they are replaced: correct, but slower on a large table.
DROP INDEX IF EXISTS tasks_by_obligation;
