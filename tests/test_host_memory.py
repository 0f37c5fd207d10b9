"""`platform.release_host_memory`: freed heap pages go back to the OS."""

import ctypes
import os
import sys

import pytest

from mclnet_jax import platform


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _has_glibc_malloc_trim() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and _has_glibc_malloc_trim()),
    reason="needs Linux with glibc",
)
def test_release_host_memory_returns_freed_heap_pages():
    # 32 KiB blocks come from the heap (below glibc's mmap threshold); free
    # every other one so the holes stay inside the heap, where free() does
    # not give them back by itself.
    blocks = [bytearray(os.urandom(16)) * 2048 for _ in range(6_000)]
    del blocks[::2]
    before = _rss_bytes()
    assert platform.release_host_memory() is True
    released = before - _rss_bytes()
    # 3,000 holes of 32 KiB = 94 MiB, 7 of each hole's 8 pages whole.
    assert released > 60 * 2**20, released
    del blocks


def test_release_host_memory_is_false_without_glibc(monkeypatch):
    monkeypatch.setattr(platform.sys, "platform", "darwin")
    assert platform.release_host_memory() is False
