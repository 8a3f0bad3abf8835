"""Deterministic, group-aware train/val/test assignment.

A split is a pure function of (seed, group key): the same group lands on the same side on every
run, on any machine, whatever the order or number of other items. Everything that must not leak
across the split (frames of one video, a near-duplicate cluster, items of one source page) shares
one group key, so it lands together.
"""
from __future__ import annotations

import hashlib

from flows.ingest.dedupe import UnionFind


def unit_hash(seed: str, key: str) -> float:
    """A uniform number in [0, 1) from sha256(seed, key)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, val_frac: float, test_frac: float, seed: str) -> str:
    u = unit_hash(seed, key)
    return "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"


def merge_groups(groups: list[str], links: list[tuple[str, str]]) -> dict[str, str]:
    """Union groups connected by ``links`` (e.g. a near-duplicate pair across two videos).

    Returns ``{group: merged_group_key}`` where the key is the smallest member, so it is stable.
    """
    uf = UnionFind()
    for g in groups:
        uf.find(g)
    for a, b in links:
        uf.union(a, b)
    return {g: uf.find(g) for g in groups}
