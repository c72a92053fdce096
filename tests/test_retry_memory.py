"""RetryMemory and StateStoreChunks: what a try leaves its retries, in few, small, expiring entries."""

from __future__ import annotations

from datetime import timedelta

from airflow_provider_novita.retry_memory import RetryMemory, StateStoreChunks, digest
from tests.fakes import FakeStateStore

HOUR = timedelta(hours=1)


def memory(store: FakeStateStore, chunk_size: int = 3) -> RetryMemory:
    return RetryMemory(StateStoreChunks(store, "ns", wait_timeout=0), chunk_size)


def test_records_are_written_a_chunk_at_a_time_with_the_retention() -> None:
    store = FakeStateStore()
    mine = memory(store)
    for n in range(7):
        mine.record(f"image {n}", {"task_id": f"t-{n}"})
    assert [key for key, _ in store.writes] == ["ns/chunk-0000", "ns/chunk-0001"]
    mine.flush()
    mine.flush()  # nothing buffered: no request
    assert [key for key, _ in store.writes] == ["ns/chunk-0000", "ns/chunk-0001", "ns/chunk-0002"]
    assert store.retentions == [4 * HOUR] * 3, "no wait: the 4 hours beyond it"
    assert store.values["ns/chunk-0002"] == {digest("image 6"): {"task_id": "t-6"}}


def test_a_retry_reads_chunks_in_order_until_one_is_missing() -> None:
    store = FakeStateStore()
    first = memory(store)
    for n in range(4):
        first.record(f"image {n}", {"task_id": f"t-{n}"})
    first.flush()
    store.values["ns/chunk-0003"] = {digest("image 9"): {"task_id": "not in sequence"}}

    assert memory(store).recall(["image 0", "image 3", "image 9"]) == [
        {"task_id": "t-0"},
        {"task_id": "t-3"},
        {},
    ]
    assert store.reads == ["ns/chunk-0000", "ns/chunk-0001", "ns/chunk-0002"]


def test_a_retry_continues_the_numbering_and_later_records_win() -> None:
    store = FakeStateStore()
    first = memory(store)
    first.record("image", {"uncertain": "ReadTimeout"})
    first.flush()
    retry = memory(store)
    assert retry.recall(["image"]) == [{"uncertain": "ReadTimeout"}]
    retry.record("image", {"task_id": "t-2"})
    retry.flush()
    assert sorted(store.values) == ["ns/chunk-0000", "ns/chunk-0001"]
    assert memory(store).recall(["image"]) == [{"task_id": "t-2"}]


def test_forget_is_one_request_and_leaves_nothing() -> None:
    store = FakeStateStore()
    mine = memory(store)
    for n in range(9):
        mine.record(f"image {n}", {"task_id": f"t-{n}"})
    mine.record("buffered", {"task_id": "t"})
    before = store.requests
    mine.forget()
    assert store.requests == before + 1
    assert store.values == {}
    mine.flush()
    assert store.values == {}, "what was buffered is forgotten too"


def test_without_chunks_nothing_is_kept_and_nothing_is_recalled() -> None:
    nowhere = RetryMemory(None, 1)
    nowhere.record("image", {"task_id": "t"})
    nowhere.flush()
    nowhere.forget()
    assert nowhere.recall(["image"]) == [{}]


def test_names_are_kept_as_digests_never_as_given() -> None:
    store = FakeStateStore()
    mine = memory(store, chunk_size=1)
    mine.record("0\nhttps://bucket.test/a.png?X-Amz-Signature=s3cr3t", {"task_id": "t"})
    assert "s3cr3t" not in str(store.values)
    assert "bucket.test" not in str(store.values)
