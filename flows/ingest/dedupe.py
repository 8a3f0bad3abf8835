"""Exact and near-duplicate detection over content hashes and 64-bit perceptual hashes.

Near duplicates are found with multi-index hashing (Norouzi et al. 2012): split each 64-bit hash
into ``d + 1`` chunks; by the pigeonhole principle two hashes within Hamming distance ``d`` agree
exactly on at least one chunk, so only hashes sharing a chunk value are compared. Pairs within ``d``
are joined with union-find into clusters.
"""
from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over hashable keys, with path halving."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # deterministic root: the smaller key, so results do not depend on input order
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def hex_to_u64(hashes) -> np.ndarray:
    """16-hex-char pHashes -> uint64 array (N,)."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(b, axis=-1).sum(-1)


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of uint64 hashes within ``max_distance`` bits.

    ``hashes``: (N,) uint64. Cost ~ sum over chunks of bucket sizes squared, not N^2.
    """
    n = len(hashes)
    if n < 2:
        return []
    chunks = max_distance + 1
    bounds = np.linspace(0, 64, chunks + 1).astype(int)
    pairs: set[tuple[int, int]] = set()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            continue
        mask = np.uint64((1 << int(hi - lo)) - 1)
        keys = (hashes >> np.uint64(lo)) & mask
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            idx = order[s:e]
            h = hashes[idx]
            dist = _popcount(h[:, None] ^ h[None, :])
            ii, jj = np.nonzero(np.triu(dist <= max_distance, k=1))
            for a, b in zip(idx[ii], idx[jj]):
                pairs.add((int(min(a, b)), int(max(a, b))))
    return sorted(pairs)


def rank(pool: str, label: int) -> int:
    """Which copy to keep among duplicates: a clean label beats a noisy one beats none."""
    return {"clean": 0, "noisy": 1}.get(pool, 2) if label >= 0 else 2


def find_duplicates(ids, shas, phashes, kinds, pools, labels, max_distance: int):
    """Decide which rows are duplicates.

    Inputs are equal-length sequences over *media items* (one row per image, one per video
    thumbnail). Returns ``(dropped, cluster_of)``:
      - ``dropped``: list of ``(index, reason, kept_index)``; reason ``"exact"`` (same content
        hash) or ``"near"`` (same near-duplicate cluster). Only images are dropped as near
        duplicates; a video thumbnail only joins a cluster, so similar videos share a split.
      - ``cluster_of``: (N,) int array, the cluster representative of each row (itself if alone),
        used to keep near-duplicates on one side of the train/val/test split.
    """
    n = len(ids)
    order = sorted(range(n), key=lambda i: (rank(pools[i], labels[i]), ids[i]))
    dropped: list[tuple[int, str, int]] = []
    keeper_of_sha: dict[str, int] = {}
    alive = []
    for i in order:  # exact: the first (best-ranked) copy of each content hash is kept
        k = keeper_of_sha.setdefault(shas[i], i)
        if k != i:
            dropped.append((i, "exact", k))
        else:
            alive.append(i)
    uf = UnionFind()
    for i in alive:
        uf.find(i)
    with_hash = [i for i in alive if phashes[i]]
    if with_hash and max_distance >= 0:
        h = hex_to_u64([phashes[i] for i in with_hash])
        for a, b in near_pairs(h, max_distance):
            uf.union(with_hash[a], with_hash[b])
    position = {i: p for p, i in enumerate(order)}
    best: dict[int, int] = {}
    for i in alive:
        r = uf.find(i)
        if r not in best or position[i] < position[best[r]]:
            best[r] = i
    for i in alive:
        keep = best[uf.find(i)]
        if keep != i and kinds[i] == "image":
            dropped.append((i, "near", keep))
    cluster_of = np.arange(n)
    for i in alive:
        cluster_of[i] = best[uf.find(i)]
    for i, _, k in dropped:
        cluster_of[i] = cluster_of[k]
    return dropped, cluster_of
