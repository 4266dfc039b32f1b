"""The server sets Python's cyclic garbage collector once startup is done (see
``asyncgate.app.settle_garbage_collector``): what startup made is frozen out of its sight,
young objects are collected less often, and cycles that requests make are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from asyncgate.app import YOUNG_COLLECTION_THRESHOLD


@pytest.fixture
def python_defaults() -> Iterator[None]:
    """Start from Python's own settings, and leave the process as the test found it."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*threshold)


class Node:
    def __init__(self) -> None:
        self.partner: Node | None = None


def test_startup_freezes_what_it_made_and_raises_the_young_threshold(python_defaults, client):
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, 10, 10)
    # The app's modules, schemas and pool: well over the few hundred a request makes.
    assert gc.get_freeze_count() > 20_000
    assert client.get("/v1/health").status_code == 200


def test_cycles_made_after_startup_are_still_collected_without_being_asked(python_defaults, client):
    first, second = Node(), Node()
    first.partner, second.partner = second, first
    watcher = weakref.ref(first)
    del first, second
    # Allocations alone must trigger the collection: the collector is tuned, not off. (Python
    # counts objects allocated and not yet freed, so these are held until the end.)
    held = []
    for _ in range(YOUNG_COLLECTION_THRESHOLD * 2):
        held.append(Node())
        if watcher() is None:
            break
    assert watcher() is None
    assert len(held) > YOUNG_COLLECTION_THRESHOLD // 2
