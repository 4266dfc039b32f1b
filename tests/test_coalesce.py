"""The coalescer: what arrives while a statement is in flight goes together in the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from asyncgate.coalesce import Coalescer


class Recorder:
    """A ``send`` that records each call and holds it until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[Hashable, list[int]]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def send(self, group: Hashable, items: list[int]) -> list[int]:
        self.calls.append((group, items))
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 10 for item in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_lone_item_goes_at_once_and_alone() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.send)
    assert await coalescer.submit(1) == 10
    assert await coalescer.submit(2) == 20
    assert recorder.calls == [(None, [1]), (None, [2])]


@pytest.mark.anyio
async def test_items_arriving_during_a_statement_go_together_next() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send)
    first = asyncio.ensure_future(coalescer.submit(1))
    await settle()
    rest = [asyncio.ensure_future(coalescer.submit(item)) for item in (2, 3, 4)]
    await settle()
    assert recorder.calls == [(None, [1])]  # the others wait for the one in flight
    recorder.release.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40]
    assert recorder.calls == [(None, [1]), (None, [2, 3, 4])]


@pytest.mark.anyio
async def test_groups_never_share_a_statement_or_wait_for_each_other() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send)
    waiting = [
        asyncio.ensure_future(coalescer.submit(1, "a")),
        asyncio.ensure_future(coalescer.submit(2, "b")),
    ]
    await settle()
    assert recorder.calls == [("a", [1]), ("b", [2])]  # b went while a was in flight
    waiting += [
        asyncio.ensure_future(coalescer.submit(3, "a")),
        asyncio.ensure_future(coalescer.submit(4, "b")),
        asyncio.ensure_future(coalescer.submit(5, "a")),
    ]
    await settle()
    recorder.release.set()
    assert await asyncio.gather(*waiting) == [10, 20, 30, 40, 50]
    assert sorted(recorder.calls) == [("a", [1]), ("a", [3, 5]), ("b", [2]), ("b", [4])]


@pytest.mark.anyio
async def test_a_statement_carries_at_most_max_batch_items() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send, max_batch=2)
    waiting = [asyncio.ensure_future(coalescer.submit(item)) for item in range(1, 6)]
    await settle()
    recorder.release.set()
    assert await asyncio.gather(*waiting) == [10, 20, 30, 40, 50]
    assert [items for _, items in recorder.calls] == [[1, 2], [3, 4], [5]]


@pytest.mark.anyio
async def test_items_submitted_in_one_turn_of_the_event_loop_go_together() -> None:
    # As a server's requests read in one turn: the first does not leave alone.
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.send)
    together = [asyncio.ensure_future(coalescer.submit(item)) for item in (1, 2, 3)]
    assert await asyncio.gather(*together) == [10, 20, 30]
    assert recorder.calls == [(None, [1, 2, 3])]


@pytest.mark.anyio
async def test_items_submitted_in_the_turn_after_the_first_go_with_it() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.send)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)  # the first has started its statement's sender
    second = asyncio.ensure_future(coalescer.submit(2))
    assert await asyncio.gather(first, second) == [10, 20]
    assert recorder.calls == [(None, [1, 2])]


@pytest.mark.anyio
async def test_a_sender_stopped_before_it_sends_cancels_its_submitters() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.send)
    submitters = [asyncio.ensure_future(coalescer.submit(item)) for item in (1, 2)]
    await asyncio.sleep(0)  # the submitters ran and started their sender,
    await asyncio.sleep(0)  # which now waits out its second turn
    [sender] = coalescer._senders
    sender.cancel()  # as when the server stops
    # Bounded, so that submitters left waiting fail the test instead of hanging it.
    outcomes = await asyncio.wait_for(asyncio.gather(*submitters, return_exceptions=True), 5)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert recorder.calls == []
    assert await coalescer.submit(3) == 30  # and the group is idle again


@pytest.mark.anyio
async def test_a_submitter_cancelled_while_waiting_leaves_the_others_their_statement() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send)
    first = asyncio.ensure_future(coalescer.submit(1))
    second = asyncio.ensure_future(coalescer.submit(2))
    await settle()
    first.cancel()  # its client went away; the statement it led is not cancelled
    recorder.release.set()
    assert await second == 20
    assert first.cancelled() and recorder.calls == [(None, [1, 2])]
    assert await coalescer.submit(3) == 30  # and the group is idle again


@pytest.mark.anyio
async def test_a_failed_statement_fails_its_submitters_only() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send)
    first = asyncio.ensure_future(coalescer.submit(1))
    await settle()
    joined = [asyncio.ensure_future(coalescer.submit(item)) for item in (2, 3)]
    await settle()
    recorder.fail_with = RuntimeError("database went away")
    recorder.release.set()
    outcomes = await asyncio.gather(first, *joined, return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    # The coalescer is idle again, and the next item goes at once.
    recorder.fail_with = None
    assert await coalescer.submit(4) == 40
    assert recorder.calls[-1] == (None, [4])


@pytest.mark.anyio
async def test_a_statement_carries_at_most_max_weight_rows_but_a_heavy_item_still_goes() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send, max_weight=10)
    first = asyncio.ensure_future(coalescer.submit(1, weight=4))
    await settle()
    waiting = [
        asyncio.ensure_future(coalescer.submit(item, weight=weight))
        for item, weight in ((2, 6), (3, 5), (4, 30), (5, 1))
    ]
    await settle()
    recorder.release.set()
    assert await first == 10
    assert await asyncio.gather(*waiting) == [20, 30, 40, 50]
    # 6 + 5 > 10: item 3 waits for the next statement; item 4 (30) goes alone.
    assert [items for _, items in recorder.calls] == [[1], [2], [3], [4], [5]]
