-- Tasks are listed in task_id order, which is creation order: task ids are UUIDv7, made by
-- AsyncGate (never by a client), time-ordered to the millisecond and counted within it. The
-- primary key (tenant, task_id) serves the listing, and tasks_by_age (tenant, created_at,
-- task_id) had no other reader. Tasks are never updated in place (a claim and a settle each
-- add a row version), so that index took three entries per life cycle: PostgreSQL's CPU per
-- batched life cycle fell by about 5 % without it (see the README, "Performance").
-- Dropping an index is quick, whatever the size of the table.
DROP INDEX IF EXISTS tasks_by_age;
