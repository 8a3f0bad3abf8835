"""robots.txt for the scraper (RFC 9309, parsed by Protego: ``*`` wildcards, ``$`` end anchors, the
longest matching rule wins; a 4xx means allow all, a 5xx or an unreachable host disallow all), one
fetch per origin, cached. The fetch is injected: :class:`flows.scrape.fetch.Fetcher` passes its own
guarded GET, so robots.txt goes through the same address policy as the media."""
from __future__ import annotations

import threading
from typing import Callable
from urllib.parse import urlsplit

from protego import Protego

from flows.scrape.urls import FetchError

def parse_robots(status: int, text: str) -> Protego | bool:
    """The rules of one robots.txt answer (RFC 9309 section 2.3.1): a 2xx body parsed by Protego
    (unparseable lines are skipped, so garbage allows everything); ``True`` (allow all) for a 4xx,
    the file being absent; ``False`` (disallow all) otherwise: a 5xx or an unreachable host."""
    if 200 <= status < 300:
        return Protego.parse(text)
    return 400 <= status < 500


def robots_allow(rules: Protego | bool, url: str, user_agent: str) -> bool:
    """Whether ``rules`` (from :func:`parse_robots`) let ``user_agent`` fetch ``url``: the group of the
    most specific matching user agent, else ``*``; in it the longest matching Allow/Disallow wins."""
    return rules if isinstance(rules, bool) else rules.can_fetch(url, user_agent)


class RobotsCache:
    """robots.txt per origin, fetched once (through the guard) and cached; thread-safe."""

    def __init__(self, get_text: Callable[[str], tuple[int, str]], user_agent: str):
        self.get_text, self.user_agent = get_text, user_agent
        self._rules: dict[str, Protego | bool] = {}
        self._lock = threading.Lock()
        self._origin_locks: dict[str, threading.Lock] = {}

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            lock = self._origin_locks.setdefault(origin, threading.Lock())
        with lock:  # one fetch per origin even when many threads ask at once
            if origin not in self._rules:
                self._rules[origin] = self._load(origin)
        return robots_allow(self._rules[origin], url, self.user_agent)

    def _load(self, origin: str) -> Protego | bool:
        try:
            status, text = self.get_text(origin + "/robots.txt")
        except FetchError as exc:
            # a refused robots.txt host is refused for media too; unreachable means disallow (RFC 9309)
            status, text = (404, "") if exc.reason.startswith("http_4") else (503, "")
        return parse_robots(status, text)
