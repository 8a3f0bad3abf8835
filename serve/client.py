"""Clients: ``sift classify`` and ``sift score-folder``, against a server or a local model.

    sift classify photo.jpg clips/ [--server http://127.0.0.1:8000] [--json] [--tiles 5] [--out results.csv]
    sift score-folder DIR (--label CLASS | --score) --min 0.6 [--max 1.0] [--copy-to OUT] [--server URL]

With ``--server`` images go in requests of ``--batch`` files, ``--concurrency`` at once, retried on
503 and lost connections (``serve.bulk``). Without it the model runs in this process (``--model``: an
artifact dir or ``models:/sift-classifier@champion``), through the same Predictor the server uses.
Either way the output keeps the order of the files given; ``--out`` writes one row per file
(``serve.outfile``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from flows.core.config import ConfigError
from flows.core.errors import SiftError
from flows.core.schema import IMAGE_EXTS, VIDEO_EXTS

from serve.bulk import Remote, Retry
from serve.outfile import out_format, row, write


def media_files(paths: list[str]) -> list[Path]:
    """Files given directly, plus image/video files found recursively in given folders (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
        elif p.exists():
            out.append(p)
        else:
            raise SiftError(f"no such file or folder: {p}", reason="not_found")
    return out


class OneByOne:
    """``classify_many`` for the in-process backends: one file at a time, in order."""

    def classify_many(self, files: list[Path], tiles: int = 1, done=None):
        for f in files:
            r = self.classify(f, tiles)
            if done is not None:
                done(1)
            yield r


class Local(OneByOne):
    """Runs the model in-process with the server's own code path."""

    def __init__(self, model: str, tracking_uri: str | None = None, overrides: tuple[str, ...] = ()):
        """``overrides``: serve-config ``key=value`` pairs, e.g. the operating point (threshold_BAD=0.6)."""
        from serve.config import load_serve

        from serve.predictor import Limits, Predictor, resolve_model

        self.cfg = load_serve(overrides=overrides)
        path, name, version = resolve_model(model, tracking_uri)
        self.limits = Limits.of(self.cfg)
        self.predictor = Predictor(path, name, version, operating_point=self.cfg.operating_point(),
                                   runtime=self.cfg.runtime_kwargs())

    def classify(self, path: Path, tiles: int = 1) -> dict:
        return next(self.classify_many([path], tiles))

    def classify_many(self, files: list[Path], tiles: int = 1, done=None, batch: int = 16):
        """Results in the order of ``files``: images prepared one by one and classified ``batch`` at a
        time (one forward per batch, as the server's batcher does), videos one by one; a file that
        cannot be read or decoded gets its own error."""
        from serve.predictor import ApiError, prepare_image

        for i in range(0, len(files), batch):
            chunk = files[i:i + batch]
            out: list[dict | None] = [None] * len(chunk)
            arrays, where = [], []
            for k, f in enumerate(chunk):
                try:
                    if f.suffix.lower() in VIDEO_EXTS:
                        out[k] = self._video(f)
                    else:
                        arrays.append(prepare_image(f.read_bytes(), self.limits, self.predictor.model.input_edge(tiles)))
                        where.append(k)
                except ApiError as exc:
                    out[k] = {"status": exc.status, **exc.body()}
                except OSError as exc:
                    out[k] = {"status": 400, "error": {"code": "unreadable", "message": f"{f}: {exc.strerror or exc}"}}
            for k, r in zip(where, self.predictor.classify(arrays, tiles=tiles) if arrays else []):
                out[k] = r
            if done is not None:
                done(len(chunk))
            yield from out

    def _video(self, path: Path) -> dict:
        """The server's video path (``predictor.video_stream``: the same limits and statuses, frames
        classified in batches of ``video_batch`` as they are decoded)."""
        import itertools

        import numpy as np

        from serve.predictor import video_stream

        duration, stream = video_stream(str(path), self.predictor.model.short_edge, self.cfg.video_fps, self.cfg)
        times, kinds, res = [], [], []
        with contextlib.closing(stream):
            while batch := list(itertools.islice(stream, self.cfg.video_batch)):
                res += self.predictor.classify([f.image for f in batch])
                times += [f.timestamp for f in batch]
                kinds += [f.kind for f in batch]
        probs = np.array([[r["probs"][c] for c in self.predictor.classes] for r in res])
        scores = [r["score"] for r in res] if res and "score" in res[0] else None
        return self.predictor.video_summary(times, kinds, probs, duration, how=self.cfg.video_aggregate,
                                            window=self.cfg.video_smooth, scores=scores)


class Prompts(OneByOne):
    """Zero-shot from text prompts (``--prompts``): a CLIP checkpoint with a text tower, no training."""

    def __init__(self, model: str, prompts: list[str]):
        from serve.config import load_serve
        from train.config import state_dir
        from train.model import resolve_backbone
        from train.zeroshot import ZeroShot, parse_prompts

        from serve.predictor import Limits

        self.limits = Limits.of(load_serve())
        self.zs = ZeroShot(resolve_backbone(model, state_dir()), parse_prompts(prompts))

    def classify(self, path: Path, tiles: int = 1) -> dict:
        from PIL import Image

        from serve.predictor import ApiError, prepare_image

        if path.suffix.lower() in VIDEO_EXTS:
            return {"status": 415, "error": {"code": "unsupported_format", "message": "--prompts takes images"}}
        try:
            arr = prepare_image(path.read_bytes(), self.limits, 448)
        except ApiError as exc:
            return {"status": exc.status, **exc.body()}
        return self.zs.predict([Image.fromarray(arr)])[0]


def backend(args) -> Remote | Local | Prompts:
    """The backend the arguments ask for, checked before any file is sent: a server that answers
    (SiftError otherwise), or a model that exists (train.preflight)."""
    if getattr(args, "prompts", None):
        if args.server:
            raise ConfigError("--prompts runs locally: leave out --server")
        if args.model.startswith("models:/"):
            raise ConfigError("--prompts needs --model CLIP (an HF id or local dir with a text tower), "
                              "e.g. --model openai/clip-vit-base-patch32")
        return Prompts(args.model, args.prompts)
    if args.server:
        if args.overrides:
            raise ConfigError("--set applies to local mode; a server has its own settings (sift serve threshold_BAD=...)")
        if args.retries < 0:
            raise ConfigError(f"--retries {args.retries}: must be >= 0")
        remote = Remote(args.server, args.token or os.environ.get("SIFT_API_TOKEN"), batch=args.batch,
                        concurrency=args.concurrency, retry=Retry(tries=args.retries + 1))
        remote.check()
        return remote
    from train.preflight import check_model

    check_model(args.model, args.tracking_uri, "--model")
    return Local(args.model, args.tracking_uri, tuple(args.overrides))


def results(be, files: list[Path], tiles: int, quiet: bool):
    """``(file, result)`` in the order of ``files`` and a ``say(line)`` that prints to stdout; with a
    progress bar on stderr when it is a terminal and not ``quiet`` (``say`` prints above the bar)."""
    bar = None
    if not quiet and sys.stderr.isatty() and files:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", file=sys.stderr, leave=False)

    def say(line: str, file=None) -> None:
        if bar is not None:
            bar.write(line, file=file or sys.stdout)
        else:
            print(line, file=file or sys.stdout, flush=True)

    def pairs():
        try:
            yield from zip(files, be.classify_many(files, tiles, bar.update if bar is not None else None))
        finally:
            if bar is not None:
                bar.close()
            if isinstance(be, Remote):
                be.close()

    return pairs(), say


def out_path(args) -> Path | None:
    """``--out``, its format checked (suffix) and its place writable: before any work."""
    if not args.out:
        return None
    from flows.core.preflight import output

    out_format(args.out)
    return output(args.out, "--out", "file")


def write_out(path: Path | None, rows: list[dict], say) -> None:
    if path is not None:
        say(f"{len(rows)} rows -> {write(path, rows)}")


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--server", help="URL of a running sift API; without it the model runs locally")
    ap.add_argument("--token", help="bearer token (default: $SIFT_API_TOKEN)")
    ap.add_argument("--model", default="models:/sift-classifier@champion", help="local mode: artifact dir or models:/ URI")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--tiles", type=int, default=1, choices=(1, 5))
    ap.add_argument("--out", metavar="FILE", help="also write one row per file: results.csv, .parquet or .jsonl")
    ap.add_argument("--batch", type=int, default=32, help="with --server: images per request (the API takes up "
                    "to its max_items, 64 by default)")
    ap.add_argument("--concurrency", type=int, default=4, help="with --server: requests in flight")
    ap.add_argument("--retries", type=int, default=4, help="with --server: retries of a request after a 503 or "
                    "a lost connection (exponential back-off); then its files are reported failed")
    ap.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="local mode: a serve setting, e.g. the operating point: --set threshold_BAD=0.6, "
                         "--set max_rate=0.01, --set fallback=NEUTRAL (the server uses its own)")


def classify_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift classify", description="Classify images and videos.")
    ap.add_argument("paths", nargs="*", help="files or folders (searched recursively)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    ap.add_argument("--prompts", nargs="+", metavar="CLASS=TEXT",
                    help="zero-shot, no training: classes from text prompts with --model CLIP (a checkpoint "
                         "with a text tower; real weights needed for useful answers)")
    _common(ap)
    args = ap.parse_args(argv)
    if args.prompts:  # `--prompts A=x B=y photos/`: what has no "=" is a path, not a prompt
        args.paths += [p for p in args.prompts if "=" not in p]
        args.prompts = [p for p in args.prompts if "=" in p]
    if not args.paths:
        ap.error("give at least one file or folder")
    out = out_path(args)
    files = media_files(args.paths)
    be = backend(args)
    failed, rows = 0, []
    pairs, say = results(be, files, args.tiles, args.quiet)
    for f, r in pairs:
        failed += "error" in r
        if out:
            rows.append(row(f, r))
        if args.json:
            say(json.dumps({"path": str(f), **r}))
        elif "error" in r:
            say(f"{str(f):60s} ERROR {r.get('status') or ''} {r['error']['code']}: {r['error']['message']}")
        else:
            probs = "  ".join(f"{c}={p:.2f}" for c, p in r["probs"].items())
            extra = f"  score={r['score']:.3f}" if "score" in r else ""
            extra += f"  tags={','.join(r['tags']) or '-'}" if "tags" in r else ""
            extra += f"  ({len(r['segments'])} segments)" if "segments" in r else ""
            label = r["label"] + ("?" if r.get("uncertain") else "")  # ?: no class reached its threshold
            say(f"{str(f):60s} {label:10s} {probs}{extra}")
    write_out(out, rows, lambda line: print(line, file=sys.stderr if args.json else sys.stdout))
    return 1 if failed == len(files) and files else 0


def score_folder_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift score-folder",
                                 description="Score a folder, sort by a class's probability (or the model's "
                                             "trained score), copy those in range.")
    ap.add_argument("folder")
    by = ap.add_mutually_exclusive_group(required=True)
    by.add_argument("--label", help="the class whose probability is the score")
    by.add_argument("--score", action="store_true", help="the score head's output (a model trained with "
                                                         "score_head=true), in the training targets' units")
    ap.add_argument("--min", type=float, default=0.5, dest="lo")
    ap.add_argument("--max", type=float, default=1.0, dest="hi")
    ap.add_argument("--copy-to", help="copy matching files here (folder structure kept)")
    _common(ap)
    args = ap.parse_args(argv)
    from flows.core.preflight import existing

    root, out = existing(args.folder, "folder", "dir"), out_path(args)
    if args.copy_to:
        from flows.core.preflight import output

        output(args.copy_to, "--copy-to")
    files = media_files([args.folder])
    be = backend(args)
    scored, rows = [], []
    pairs, say = results(be, files, args.tiles, args.quiet)
    for f, r in pairs:
        if out:
            rows.append(row(f, r))
        if "error" in r:
            say(f"skip {f}: {r['error']['code']}", file=sys.stderr)
            continue
        if args.score and "score" not in r:
            raise ConfigError("--score: the model has no score head (train it with score_head=true)")
        if args.label and args.label not in r["probs"]:
            raise ConfigError(f"--label {args.label!r} is not one of the model's classes {list(r['probs'])}")
        scored.append((r["score"] if args.score else r["probs"][args.label], f))
    scored.sort(key=lambda t: -t[0])
    picked = [(s, f) for s, f in scored if args.lo <= s <= args.hi]
    for s, f in scored:
        print(f"{s:.3f}  {'*' if args.lo <= s <= args.hi else ' '}  {f}")
    if args.copy_to:
        for _, f in picked:
            dst = Path(args.copy_to) / f.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
    print(f"{len(picked)} of {len(scored)} files with {'score' if args.score else args.label} in "
          f"[{args.lo}, {args.hi}]"
          + (f" copied to {args.copy_to}" if args.copy_to else ""))
    write_out(out, rows, print)
    return 0
