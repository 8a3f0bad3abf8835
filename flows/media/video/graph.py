"""sift's guard on ffmpeg command lines built as ffmpeg-python graphs.

The guard: every input carries a protocol whitelist and a demuxer whitelist (:func:`source`), every
command ``-nostdin -hide_banner -nostats -loglevel ...`` (:func:`command`). :func:`command` compiles
a graph into the argv that ``flows.media.video.run`` / ``popen`` start (the one guarded start:
stdin closed, stderr captured, timeout, kill and reap); ffmpeg-python's own ``run`` and ``probe``
are never used, they start processes outside it.

How ffmpeg-python writes a graph: input options before their ``-i``, filters as one
``-filter_complex`` chain with ``[0:V:0]``-style input labels and the output mapped from its last
label, output options sorted by name, global options after the output. Option values are escaped for
both filtergraph levels (``\\ ' = :`` in a value, then ``\\ ' [ ] , ;`` in the graph), so paths
and expressions go in as they are. Positional filter arguments are escaped twice (ffmpeg-python
0.2), so any value that may hold one of those characters is passed by name.
This module does not import the rest of ``flows.media.video`` (which imports it).
"""
from __future__ import annotations

import ffmpeg

PROTOCOLS = "file,pipe"
# Demuxers for the containers in schema.VIDEO_EXTS (ffmpeg matches any comma-separated name).
DEMUXERS = "mov,mp4,matroska,webm"
# "repeat": never fold identical log lines into "Last message repeated N times" (we count lines).
# "level": prefix "[error]" etc., so decoder errors can be told from informational lines.
LOGLEVEL = "repeat+level+info"
GUARD_INPUT = ("-protocol_whitelist", "-format_whitelist")


def source(url: str, protocols: str = PROTOCOLS, formats: str = DEMUXERS, **options):
    """ffmpeg-python input ``url`` (already a local ``file:`` URL or our own file) reading only through
    ``protocols`` and the demuxers ``formats``; ``options`` are further input options (``ss=``,
    ``format=``, ``threads=`` ...)."""
    return ffmpeg.input(url, protocol_whitelist=protocols, format_whitelist=formats, **options)


def command(stream, loglevel: str = LOGLEVEL, overwrite: bool = False) -> list[str]:
    """The argv of the ffmpeg-python output ``stream``, with the guard's global options (and ``-y``
    when ``overwrite``). ValueError when an input lacks the whitelists (not made by :func:`source`)."""
    stream = stream.global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", loglevel)
    argv = (stream.overwrite_output() if overwrite else stream).compile()
    bad = unguarded_inputs(argv)
    if bad:
        raise ValueError(f"ffmpeg inputs without protocol/format whitelists: {bad}")
    return argv


def unguarded_inputs(argv: list[str]) -> list[str]:
    """The ``-i`` inputs of ``argv`` whose own options (those since the previous input) lack either
    whitelist. Relies on ffmpeg-python's layout: all inputs, each after its options, come first."""
    bad, opts, i = [], set(), 1
    while i < len(argv):
        if argv[i] == "-i" and i + 1 < len(argv):
            if not opts.issuperset(GUARD_INPUT):
                bad.append(argv[i + 1])
            opts, i = set(), i + 2
        else:
            opts.add(argv[i])
            i += 1
    return bad

