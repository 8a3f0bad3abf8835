import numpy as np

from flows.ingest.dedupe import find_duplicates, near_pairs
from flows.ingest.split import merge_groups, split_of


def _brute(h, d):
    return sorted((i, j) for i in range(len(h)) for j in range(i + 1, len(h))
                  if bin(int(h[i]) ^ int(h[j])).count("1") <= d)


def test_multi_index_hashing_finds_exactly_the_brute_force_pairs():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    noisy = [b ^ np.uint64(1 << int(rng.integers(0, 64))) ^ np.uint64(1 << int(rng.integers(0, 64))) for b in base]
    h = np.concatenate([base, np.array(noisy, dtype=np.uint64)])
    for d in (0, 2, 4, 8):
        assert near_pairs(h, d) == _brute(h, d)


def test_exact_duplicates_keep_the_best_labeled_copy():
    ids = ["a", "a", "b"]
    dropped, _ = find_duplicates(ids, ["s1", "s1", "s2"], ["0" * 16, "0" * 16, "f" * 16],
                                 ["image"] * 3, ["unlabeled", "clean", "clean"], [-1, 0, 1], 4)
    assert dropped == [(0, "exact", 1)]


def test_near_duplicates_drop_images_but_only_group_thumbnails():
    h = ["00000000000000ff", "00000000000000fe", "ffffffffffff0000", "00000000000000fc"]
    dropped, cluster = find_duplicates(["i1", "i2", "i3", "v1"], ["s1", "s2", "s3", "s4"], h,
                                       ["image", "image", "image", "thumbnail"],
                                       ["clean"] * 4, [0, 0, 0, 0], 4)
    assert [(i, r) for i, r, _ in dropped] == [(1, "near")]
    assert cluster[0] == cluster[1] == cluster[3] and cluster[2] == 2


def test_split_is_deterministic_and_roughly_proportional():
    keys = [f"g{i}" for i in range(4000)]
    a = [split_of(k, 0.15, 0.15, "s") for k in keys]
    assert a == [split_of(k, 0.15, 0.15, "s") for k in keys]
    frac = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert abs(frac["val"] - 0.15) < 0.03 and abs(frac["test"] - 0.15) < 0.03
    assert a != [split_of(k, 0.15, 0.15, "other") for k in keys]


def test_merge_groups_is_transitive_and_order_independent():
    m1 = merge_groups(["c", "a", "b", "d"], [("c", "b"), ("b", "a")])
    m2 = merge_groups(["a", "b", "c", "d"], [("a", "b"), ("b", "c")])
    assert m1 == m2 and m1["a"] == m1["b"] == m1["c"] == "a" and m1["d"] == "d"
