"""ops.heap: freed memory stays in the process while training, so a step does not fault its pages in again."""

import resource
import sys

import pytest
import torch

from mambacast.ops import heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or heap._glibc() is None,
                                reason="kept_heap acts on glibc's malloc only")

BIG = 64 << 20   # above glibc's largest adaptive mmap threshold (32 MiB): mmapped afresh each time by default


def faults_per_allocation(n: int = 4) -> float:
    """Minor page faults of allocating, writing and freeing a BIG-byte tensor, averaged over n after a warm-up
    (relative figures only: with transparent huge pages a fault maps 2 MiB instead of 4 KiB)."""
    torch.empty(BIG // 4).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(BIG // 4).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def test_kept_heap_reuses_freed_memory_and_gives_it_back_after():
    default = faults_per_allocation()                    # glibc's default: fresh pages every time
    assert default > 0
    with heap.kept_heap():
        assert faults_per_allocation() * 20 < default    # the freed block is reused
        with heap.kept_heap():                           # re-entrant: the inner exit keeps the heap
            pass
        assert faults_per_allocation() * 20 < default
    assert faults_per_allocation() > default / 2         # defaults again once the outermost exits


def test_kept_heap_can_be_turned_off(monkeypatch):
    default = faults_per_allocation()
    monkeypatch.setenv("MAMBACAST_KEEP_HEAP", "0")
    with heap.kept_heap():
        assert faults_per_allocation() > default / 2


def test_kept_heap_decorates_a_function_that_raises():
    @heap.kept_heap()
    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fails()
    assert heap._depth == 0
