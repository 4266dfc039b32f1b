-- Tasks are listed in task_id order (UUIDv7: creation order), through the primary key, as on
-- PostgreSQL (its migration 0007 says why): tasks_by_age has no reader left.
DROP INDEX IF EXISTS tasks_by_age;
