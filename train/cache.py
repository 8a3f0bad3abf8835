"""The embedding + face-feature cache, computed once by a Ray Data actor pool.

While the backbone is frozen its embeddings never change, so each image goes through the ViT and
the face detector once, here, instead of once per epoch. ``cache_views`` views are stored per
image: view 0 is the eval (centre) view, the others are augmented crops, so the student and the
teacher can be fed different views of the same image from the cache, which is what gives the
consistency loss something to teach (Tarvainen & Valpola 2017, sec. 2).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .augment import augment
from .model import embed
from .transforms import Preproc, center_crop, decode, normalize, to_uint8_batch

KEEP = ["id", "group_id", "kind", "label", "pool", "score", "tags", "split", "path", "image"]


class Embedder:
    """``map_batches`` callable: stored JPEGs -> face features (B,F) + embeddings (B,V,D)."""

    def __init__(self, backbone_dir: str, preproc: dict, views: int, faces: dict | None, seed: int,
                 threads: int = 1, aug: dict | None = None, stats: bool = False, graph: str | None = None):
        """``graph``: an exported embedding function (``train.runtime.export.export_embedder``) to run
        on ONNX Runtime instead of the torch backbone."""
        from .colour import ColourStats
        from .model import load_backbone

        torch.set_num_threads(threads)
        self.p = Preproc.from_dict(preproc)
        self.graph = None
        if graph:
            from .runtime.session import OrtGraph

            self.graph = OrtGraph(graph, threads=threads)
        else:
            self.model, _ = load_backbone(backbone_dir)
            self.model.eval()
        self.stats = ColourStats(self.p.mean, self.p.std) if stats else None
        self.views, self.seed, self.aug = views, seed, dict(aug or {})
        self.detector = None
        if faces:
            from .faces import FaceDetector

            self.detector = FaceDetector(**faces)

    @torch.no_grad()
    def embed(self, squares: list[np.ndarray], ids: list[str]) -> np.ndarray:
        """uint8 squares (B,S,S,3) -> (B, V, D) float32. Each item's augmented views come from its own
        generator seeded by (id, seed): an item gets the same views whichever batch it lands in, so the
        cache does not depend on how Ray Data cut the blocks."""
        x = to_uint8_batch(squares)
        gens = [torch.Generator().manual_seed(_seed_of(i, self.seed)) for i in ids]
        views = [center_crop(x, self.p.crop)]
        for _ in range(self.views - 1):
            views.append(torch.cat([augment(x[i:i + 1], (self.p.crop, self.p.crop), generator=g, **self.aug)
                                    for i, g in enumerate(gens)]))
        out = []
        for v in views:
            if self.graph is not None:  # the same function, exported (colour statistics included)
                out.append(torch.from_numpy(self.graph(normalize(v, self.p).numpy())["emb"]))
            else:
                out.append(embed(self.model, normalize(v, self.p), self.stats))
        return torch.stack(out, dim=1).numpy().astype(np.float32)

    def __call__(self, batch: dict) -> dict:
        images = list(batch["image"])
        ids = [str(i) for i in batch["id"]]
        squares = [decode(b, self.p.size, self.p.fit) for b in images]
        out = {k: batch[k] for k in KEEP if k in batch}
        out["emb"] = self.embed(squares, ids)
        if self.detector is not None:
            from flows.media.images import decode_rgb_array

            out["face"] = self.detector.features([decode_rgb_array(b) for b in images])
        else:
            out["face"] = np.zeros((len(images), 0), np.float32)
        return out


def _graph_for(data_dir: Path, out: Path, backbone_dir: str, preproc: Preproc, stats: bool,
               runtime: str) -> str | None:
    """The exported embedding graph for ``runtime`` (None: torch), measured on up to 64 of the data's
    images (view 0, as cached)."""
    if runtime == "torch":
        return None
    import pyarrow.dataset as pads

    from .colour import ColourStats
    from .model import load_backbone
    from .runtime.export import export_embedder

    rows = pads.dataset(str(Path(data_dir) / "data"), format="parquet").head(64, columns=["image"])
    squares = [decode(b, preproc.size, preproc.fit) for b in rows.column("image").to_pylist()]
    sample = normalize(center_crop(to_uint8_batch(squares), preproc.crop), preproc)
    backbone, _ = load_backbone(backbone_dir)
    colour = ColourStats(preproc.mean, preproc.std) if stats else None
    chosen, path, _ = export_embedder(backbone.eval(), colour, sample, out.with_name(out.name + ".onnx"), runtime)
    print(f"[cache] embedding with {chosen}", flush=True)
    return str(path) if path else None


def _seed_of(item_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{item_id}|{seed}".encode()).digest()[:7], "big")


def cache_key(data_dir: Path, backbone_dir: str, preproc: Preproc, views: int, faces: dict | None,
              seed: int, aug: dict | None = None, stats: bool = False, runtime: str = "torch") -> str:
    """Identifies a cache: the data (its manifest), the backbone, preprocessing, views, detector,
    the statistics branch."""
    manifest = Path(data_dir) / "manifest.json"
    data_id = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else str(data_dir)
    bb = Path(backbone_dir) / "config.json"
    bb_id = hashlib.sha256(bb.read_bytes()).hexdigest() if bb.exists() else backbone_dir
    weights = next((w for w in (Path(backbone_dir) / n for n in ("model.safetensors", "weights.pt")) if w.exists()),
                   None)
    if weights is not None:  # random builtins share a config; their weights (seeded) identify them
        st = weights.stat()
        bb_id += f"{st.st_size}"
    # "v2": rows sorted by id, views seeded per item (caches built before that are not reused)
    parts = [data_id, bb_id, backbone_dir, preproc.to_dict(), views, faces, seed, aug or {}, "v2"]
    if stats:  # appended only when on, so caches built without the branch keep their keys
        parts.append("colour-stats")
    if runtime != "torch":  # other embeddings (INT8 ones differ slightly): another cache
        parts.append(f"runtime-{runtime}")
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_cache(data_dir: Path, out: Path, backbone_dir: str, preproc: Preproc, views: int,
                faces: dict | None, seed: int, actors: int = 1, actor_cpus: float = 1.0,
                io_cpus: float = 0.1, batch_size: int = 32, aug: dict | None = None, stats: bool = False,
                runtime: str = "torch", local_max: int = 0) -> Path:
    """Run the Ray Data pass once; reuse ``out`` when it is complete (``_SUCCESS`` marker).
    ``runtime``: the actors' engine (``cache_runtime``: torch, or the embedding function exported to
    ONNX fp32 / INT8, auto choosing by measured cosine, see ``export_embedder``). Data of at most
    ``local_max`` items is embedded in this process by the same :class:`Embedder` (``embed_here``)."""
    import ray

    if (out / "_SUCCESS").exists():
        print(f"[cache] reusing {out}", flush=True)
        return out
    import pyarrow.dataset as pads

    rows = str(Path(data_dir) / "data")
    source = pads.dataset(rows, format="parquet")
    # an older preprocess output has no tags column: read what is there
    columns = [c for c in KEEP if c in set(source.schema.names)]
    graph = _graph_for(data_dir, out, backbone_dir, preproc, stats, runtime)
    kw = dict(backbone_dir=backbone_dir, preproc=preproc.to_dict(), views=views, faces=faces, seed=seed, aug=aug,
              stats=stats, graph=graph)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    n = source.count_rows()
    where = "in this process" if n <= local_max else f"on up to {actors} actor(s)"
    print(f"[cache] embedding {n} items of {data_dir} with {backbone_dir} ({views} views, {where}) -> {out}",
          flush=True)
    if n <= local_max:
        embed_here(source.to_table(columns=columns), tmp, kw, batch_size)
    else:
        ds = ray.data.read_parquet(rows, columns=columns, num_cpus=io_cpus)
        # Rows sorted by id and written in that order: preprocessing's actor pool writes rows in whatever
        # order its actors finish, and training reads the cache in file order, so without this the same
        # data and seed would give different batches (and metrics) after every re-preprocess.
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        ds = ds.sort("id")
        ds = ds.map_batches(Embedder, fn_constructor_kwargs=kw, batch_size=batch_size, batch_format="numpy",
                            num_cpus=actor_cpus, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
        ds.write_parquet(str(tmp), ray_remote_args={"num_cpus": io_cpus})
    (tmp / "_SUCCESS").write_text("ok")
    tmp.rename(out)
    return out


def embed_here(table, out: Path, embedder: dict, batch_size: int) -> None:
    """The actor pool's pass without the pool: ``table`` (the preprocess output's rows) sorted by id,
    cut into ``batch_size`` batches, each converted to and from Ray Data's numpy batch format exactly as
    ``map_batches`` does, embedded by ``Embedder(**embedder)`` on this process's threads and written as
    ``out/00000.parquet``."""
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    out.mkdir(parents=True)
    table = table.sort_by("id")
    threads, writer = torch.get_num_threads(), None
    try:
        fn = Embedder(**embedder, threads=threads)  # it sets torch's thread count: put back after
        for start in range(0, table.num_rows, batch_size):
            batch = BlockAccessor.for_block(table.slice(start, batch_size)).to_batch_format("numpy")
            block = BlockAccessor.batch_to_block(fn(batch))
            # one file, a row group per batch: a file per batch makes every later read several tasks
            writer = writer or pq.ParquetWriter(out / "00000.parquet", block.schema)
            writer.write_table(block)
    finally:
        torch.set_num_threads(threads)
        if writer is not None:
            writer.close()
