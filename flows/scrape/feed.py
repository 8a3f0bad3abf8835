"""The outputs of ``sift scrape`` that talk to a backend: verdicts via ``/v1/jobs`` and a filtered feed.

Pure parts (:func:`feed_entries`, :func:`render_feed`) turn items + verdicts into a self-contained
HTML page; :func:`classify_remote` is the thin HTTP shell (retries with backoff, polling, a deadline).
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.scrape.config import ScrapeConfig



def server_classes(server: str, token: str) -> list[str] | None:
    """The class names of the backend's model (``/readyz``), or None when it does not answer."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(server.rstrip("/") + "/readyz", headers=headers, timeout=10, trust_env=False)
        classes = r.json().get("classes") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return [str(c) for c in classes] if isinstance(classes, list) else None


def classify_remote(items: list[dict], server: str, token: str, cfg: ScrapeConfig) -> dict[str, dict]:
    """Verdicts from the backend: one job per page (or per ``submit_batch`` items), polled until done.

    Returns ``{item id: result}``; a job that cannot be submitted or does not finish gives its items
    an ``error`` instead (the feed shows why), so the scrape itself never fails on the backend.
    """
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    by_page: dict[str, list[dict]] = {}
    for it in items:
        if "image" in it:  # kept videos are not sent: the jobs API takes images
            by_page.setdefault(it["page"], []).append(it)
    chunks = [b[i:i + cfg.submit_batch] for b in by_page.values() for i in range(0, len(b), cfg.submit_batch)]
    out: dict[str, dict] = {}
    # trust_env=False: the backend is ours; an environment proxy must not see images or the token
    with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=60, trust_env=False) as client:
        jobs = [(_submit(client, chunk, cfg), chunk) for chunk in chunks]
        deadline = time.monotonic() + cfg.server_timeout_s
        for job, chunk in jobs:
            body = job if "error" in job else _poll(client, job["status_url"], deadline, cfg.poll_s)
            results = body.get("results") or []
            for k, it in enumerate(chunk):
                res = results[k] if k < len(results) else None
                if not (res and body.get("status") == "done"):  # the item's, else the job's reason
                    res = {"error": (res or {}).get("error") or body.get("error")
                           or {"code": f"job_{body.get('status')}", "message": "no result"}}
                out[it["id"]] = res
    return out


def _submit(client, chunk: list[dict], cfg: ScrapeConfig) -> dict:
    """POST one job; a full queue (503) is retried with backoff. Returns the 202 body or ``{error}``."""
    body = {"items": [{"name": it["id"], "image": base64.b64encode(it["image"]).decode()} for it in chunk],
            "tiles": cfg.tiles}
    for attempt in range(cfg.retries + 1):
        try:
            r = client.post("/v1/jobs", json=body)
        except Exception as exc:  # httpx.HTTPError: server down or unreachable
            r, err = None, {"code": "unreachable", "message": f"{type(exc).__name__}: {exc}"}
        if r is not None and r.status_code == 202:
            return r.json()
        if r is not None:
            err = _error_of(r)
        if r is None or r.status_code != 503:
            break
        time.sleep(cfg.backoff_s * 2 ** attempt)
    return {"status": "failed", "error": err}


def _poll(client, url: str, deadline: float, every: float) -> dict:
    while True:
        try:
            r = client.get(url)
            body = r.json() if r.status_code == 200 else {"status": "failed", "error": _error_of(r)}
        except Exception as exc:  # a blip while polling: try again until the deadline
            body = {"status": "running", "error": {"code": "unreachable", "message": str(exc)}}
        if body.get("status") in ("done", "failed"):
            return body
        if time.monotonic() > deadline:
            return {"status": "timeout", "error": {"code": "timeout", "message": "job not done in time"}}
        time.sleep(every)


def _error_of(r) -> dict:
    try:
        return r.json()["error"]
    except Exception:
        return {"code": f"http_{r.status_code}", "message": r.text[:200]}


def feed_entries(items: list[dict], verdicts: dict[str, dict], cfg: ScrapeConfig) -> list[dict]:
    """One feed entry per item: label, probabilities, the label's score and what the feed does with it."""
    out = []
    for it in items:
        v = verdicts.get(it["id"]) or {"error": {"code": "not_classified", "message": f"{it['kind']} not sent"}}
        label, probs, unsure = v.get("label"), v.get("probs") or {}, bool(v.get("uncertain"))
        # an uncertain item (no class reached its threshold) is never highlighted: that is a claim
        verdict = ("error" if "error" in v else "hide" if label in cfg.hide_labels
                   else "highlight" if label in cfg.highlight_labels and not unsure else "show")
        out.append({"id": it["id"], "page": it["page"], "url": it["url"], "kind": it["kind"],
                    "timestamp": it["timestamp"], "label": label, "uncertain": unsure, "probs": probs,
                    "score": probs.get(label) if label else None, "verdict": verdict, "error": v.get("error")})
    return out


FEED_CSS = """body{font:14px system-ui,sans-serif;margin:2em;background:#fafafa} h2{font-size:13px;color:#555}
.grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.item{width:240px;background:#fff;border:2px solid #ddd;border-radius:8px;padding:8px}
.item img{width:100%;border-radius:4px} .highlight{border-color:#2a9d4b;box-shadow:0 0 0 3px #bfe8c9}
.hide{border-style:dashed;opacity:.8} .error{border-color:#d08a00} .score{font-weight:600}
.probs,.src{font-size:11px;color:#666} summary{cursor:pointer}
.feedback{margin-top:6px;font-size:12px} .feedback .ok{color:#2a9d4b} .feedback .err{color:#b00020}"""

# The "wrong verdict" buttons: POST {id, url, page, verdict, suggested} to the review server's
# /api/report (flows.core.labels reports; `sift review` shows them in its "reported" queue). The page is a
# local file, so the server answers CORS for the "null" origin; the result is shown inline.
FEED_JS = """document.addEventListener('click', async (e) => {
  const b = e.target.closest('button.wrong'); if (!b) return;
  const art = b.closest('article'), out = art.querySelector('.sent'), sel = art.querySelector('select.suggest');
  const body = {id: art.dataset.itemId, url: art.dataset.url, page: art.dataset.page,
                verdict: art.dataset.verdict, suggested: sel ? sel.value : ''};
  b.disabled = true; out.textContent = 'sending...'; out.className = 'sent';
  try {
    const r = await fetch(REVIEW.url.replace(/\\/$/, '') + '/api/report', {method: 'POST', body: JSON.stringify(body),
      headers: {'content-type': 'application/json', authorization: 'Bearer ' + REVIEW.token}});
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((j.error && j.error.message) || ('HTTP ' + r.status));
    out.textContent = 'reported, thanks'; out.className = 'sent ok';
  } catch (err) { out.textContent = 'failed: ' + err.message; out.className = 'sent err'; b.disabled = false; }
});"""


def _feedback(e: dict, classes: list[str]) -> str:
    """The "wrong verdict" button and a "should be" choice of the other classes."""
    from html import escape

    opts = "".join(f'<option value="{escape(c)}">{escape(c)}</option>' for c in classes if c != e["label"])
    return (f'<select class="suggest" aria-label="should be"><option value="">should be?</option>{opts}</select> '
            '<button class="wrong" type="button">wrong verdict</button> <span class="sent"></span>')


def _article(e: dict, jpeg: bytes | None, classes: list[str] | None = None) -> str:
    """One feed item: hidden ones inside a closed <details> ("show"), a score on every one; with
    ``classes`` (a review server is set) a "wrong verdict" button in ``.feedback``."""
    from html import escape

    img = f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">' if jpeg else ""
    what = f'{escape(str(e["label"]))} {e["score"] or 0:.2f}' if e["label"] else escape(e["error"]["code"])
    what += " (uncertain)" if e.get("uncertain") else ""
    score = f'<span class="score">{what}</span>'
    body = (f"<details><summary>{score} hidden: show</summary>{img}</details>" if e["verdict"] == "hide"
            else f"{img}<div>{score}</div>")
    probs = " · ".join(f"{escape(c)} {p:.2f}" for c, p in e["probs"].items())
    at = f' @ {e["timestamp"]:.1f} s' if e["timestamp"] is not None else ""  # which video frame
    feedback = _feedback(e, classes) if classes is not None else ""
    return (f'<article class="item {e["verdict"]}" data-item-id="{escape(e["id"])}" '
            f'data-label="{escape(str(e["label"]))}" data-verdict="{escape(e["label"] or "")}" '
            f'data-url="{escape(e["url"])}" data-page="{escape(e["page"])}">{body}<div class="probs">{probs}</div>'
            f'<a class="src" href="{escape(e["url"])}">{escape(e["url"][-40:])}{at}</a>'
            f'<div class="feedback">{feedback}</div></article>')


def render_feed(entries: list[dict], images: dict[str, bytes], title: str = "sift feed",
                review: dict | None = None) -> str:
    """A self-contained HTML page grouped by source page: hidden labels collapsed behind a "show"
    toggle, highlighted ones framed, a score on every item, images inlined as data URIs.

    ``review`` (``{"url", "token"}`` of a ``sift review`` server) adds a "wrong verdict" button per item;
    the token is then written into the page, which should stay on the reviewer's machine."""
    from html import escape

    classes = list(dict.fromkeys(c for e in entries for c in e["probs"])) if review else None
    sections: dict[str, list[str]] = {}
    for e in entries:
        sections.setdefault(e["page"], []).append(_article(e, images.get(e["id"]), classes))
    body = "".join(f'<section><h2>{escape(page)}</h2><div class="grid">{"".join(arts)}</div></section>'
                   for page, arts in sections.items())
    script = ""
    if review:
        conf = json.dumps({"url": review["url"], "token": review.get("token", "")}).replace("</", "<\\/")
        script = f"<script>const REVIEW = {conf};\n{FEED_JS}</script>"
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{FEED_CSS}</style></head><body><h1>{escape(title)}</h1>{body}{script}</body></html>")


def write_feed(out: Path, items: list[dict], verdicts: dict[str, dict], cfg: ScrapeConfig) -> Path:
    """``out/feed.html`` (self-contained) and ``out/feed.json`` (the same entries, no pixels)."""
    import os

    out.mkdir(parents=True, exist_ok=True)
    entries = feed_entries(items, verdicts, cfg)
    (out / "feed.json").write_text(json.dumps(entries, indent=1))
    images = {it["id"]: it["image"] for it in items if "image" in it}
    review = {"url": cfg.review_url, "token": cfg.review_token or os.environ.get("SIFT_REVIEW_TOKEN", "")} \
        if cfg.review_url else None
    (out / "feed.html").write_text(render_feed(entries, images, review=review), encoding="utf-8")
    return out / "feed.html"
