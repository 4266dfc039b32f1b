"""Ids: time-ordered version-7 UUIDs in canonical form, never repeated, not even across a fork."""

from __future__ import annotations

import os
import time
import uuid

from asyncgate.ids import new_id


def test_new_ids_are_canonical_version_7_uuids_and_never_repeat() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:2000]:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, value)


def test_new_ids_carry_their_millisecond_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.003)
    second = new_id()
    after = time.time_ns() // 1_000_000
    stamps = [int(value.replace("-", "")[:12], 16) for value in (first, second)]
    assert before <= stamps[0] < stamps[1] <= after
    # A later millisecond sorts after, as text and as PostgreSQL's uuid ordering (bytewise).
    assert first < second and uuid.UUID(first).bytes < uuid.UUID(second).bytes


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    new_id()  # the generator's state is set up before the fork
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write_end, "".join(new_id() for _ in range(4)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write_end)
    from_child = os.read(read_end, 4 * 36).decode()
    os.close(read_end)
    from_parent = "".join(new_id() for _ in range(4))
    assert len(from_child) == 4 * 36
    assert from_child != from_parent
