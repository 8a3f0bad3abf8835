"""``sift scan``: long videos -> cuts, scored frames, labelled segments, a plot (+ a reel).

    plan      ffprobe the keyframes -> decode chunks snapped to them
    decode    one ffmpeg per chunk on the frame grid + scene cuts (what Ray's decode workers import:
              no model code, so this package's __init__ stays empty of imports)
    job       the Ray Data job: plan -> decode tasks -> scoring actor pool -> per-video outputs
    timeline  frames -> smoothed scores, labelled segments, span lines
"""
