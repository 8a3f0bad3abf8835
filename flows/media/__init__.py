"""Media handling: validation, image decoding, video (ffmpeg), highlight reels."""
