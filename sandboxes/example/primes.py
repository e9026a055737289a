"""A segmented sieve of Eratosthenes: the example payload's real work."""
from __future__ import annotations

from typing import List


def primes_in_range(start: int, stop: int) -> List[int]:
    """All primes p with start <= p < stop."""
    if stop <= 2 or stop <= start:
        return []
    start = max(start, 2)
    limit = int(stop ** 0.5) + 1
    base = bytearray([1]) * (limit + 1)
    base[0:2] = b"\x00\x00"
    for i in range(2, int(limit ** 0.5) + 1):
        if base[i]:
            base[i * i::i] = bytearray(len(base[i * i::i]))
    small = [i for i in range(2, limit + 1) if base[i]]
    seg = bytearray([1]) * (stop - start)
    for p in small:
        first = max(p * p, ((start + p - 1) // p) * p)
        if first < stop:
            seg[first - start::p] = bytearray(len(seg[first - start::p]))
    return [start + i for i, flag in enumerate(seg) if flag]
