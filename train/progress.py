"""Progress lines from Ray Train workers to the driver's console."""
from __future__ import annotations

import logging

_log = logging.getLogger("sift.train")


def say(message: str) -> None:
    """One progress line on the driver's console. Ray Train V2 reroutes ``print`` in workers through
    logging and, because the worker's stdout is wrapped, also tees it to stdout: every printed line
    showed twice. Its logging handlers already reach the driver, so log once through them."""
    _log.info(message)
