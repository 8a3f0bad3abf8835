"""The review page of ``sift review``: one self-contained HTML document (no build step, no CDN).

Keyboard first, because reviewing is hundreds of quick decisions: ``1``-``9`` assign class N, ``s`` or
space skips, ``u`` undoes your last review, arrow keys move between cards. Keys typed faster than the
server answers are queued in order, each applying to the card shown when its turn comes. The page
talks to the API with the cookie it got from the one-time ``/?token=`` link.
"""

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>sift review</title><link rel="icon" href="data:,">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f5f5f4;color:#222}
header{display:flex;gap:12px;align-items:center;padding:10px 16px;background:#222;color:#eee}
header h1{font-size:16px;margin:0 12px 0 0} header .tab{background:#444;color:#eee;border:0;border-radius:4px;
padding:5px 10px;cursor:pointer} header .tab.on{background:#e9c46a;color:#222} #stats{margin-left:auto;font-size:12px}
main{display:flex;gap:20px;padding:16px;align-items:flex-start} .media{width:480px}
.media>img{width:100%;max-height:480px;object-fit:contain;background:#ddd;border-radius:6px}
#frames{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px} #frames img{width:72px;border-radius:3px;opacity:.7}
#frames img.cur{outline:3px solid #e76f51;opacity:1} .info{flex:1;max-width:560px}
#reason{background:#fff3cd;padding:6px 10px;border-radius:4px;margin-bottom:10px}
.row{display:grid;grid-template-columns:110px 1fr 1fr;gap:8px;align-items:center;margin:4px 0}
.bar{height:14px;background:#e5e5e5;border-radius:3px;position:relative}
.bar span{display:block;height:100%;border-radius:3px;background:#2a9d8f} .bar.t span{background:#8e7dbe}
.bar i{position:absolute;right:4px;top:-1px;font-size:11px;font-style:normal}
#keys{margin-top:14px;display:flex;flex-wrap:wrap;gap:6px} #keys button{padding:6px 10px;border:1px solid #bbb;
border-radius:4px;background:#fff;cursor:pointer} kbd{font-weight:700;margin-right:4px}
#status{padding:6px 16px;min-height:1.4em} #status.err{color:#b00020} .meta{color:#666;font-size:12px}
#empty{padding:40px;font-size:16px;color:#666}
</style></head><body data-done="0">
<header><h1>sift review</h1><span id="tabs"></span><span id="stats"></span></header>
<div id="status" role="status"></div>
<div id="empty" hidden>Nothing left in this queue.</div>
<main id="card" hidden>
 <div class="media"><img id="img" alt=""><div id="frames"></div></div>
 <div class="info">
  <div id="reason"></div>
  <div>current label <b id="label"></b> <span class="meta" id="pool"></span></div>
  <div>predicted: student <b id="pred"></b>, teacher <b id="pred-teacher"></b></div>
  <div class="row meta"><span></span><span>student</span><span>teacher</span></div>
  <div id="bars"></div>
  <div class="meta" id="where"></div>
  <div id="keys"></div>
  <div class="meta">keys: 1-9 label, s / space skip, u undo, arrows move</div>
 </div>
</main>
<script>
const S = {strategy: 'uncertain', strategies: [], items: [], i: 0, classes: [], chain: Promise.resolve()};
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
const media = (id) => '/api/media/' + encodeURIComponent(id);

async function api(path, opts = {}) {
  const r = await fetch(path, {credentials: 'same-origin', headers: {'content-type': 'application/json'}, ...opts});
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || ('HTTP ' + r.status));
  return body;
}
function status(msg, err = false) { const s = $('status'); s.textContent = msg; s.className = err ? 'err' : ''; }
function done() { document.body.dataset.done = String(+document.body.dataset.done + 1); }

async function stats() {
  const st = await api('/api/stats');
  S.strategies = st.strategies; S.classes = st.classes;
  $('tabs').innerHTML = S.strategies.map((s) =>
    `<button class="tab${s === S.strategy ? ' on' : ''}" data-s="${s}">${s}</button>`).join(' ');
  $('stats').textContent = `${st.user} · reviewed ${st.reviewed} · open reports ${st.open_reports} · run ${st.run}`;
}
async function load(strategy, focus) {
  S.strategy = strategy;
  const q = await api('/api/queue?strategy=' + encodeURIComponent(strategy));
  S.items = q.items; S.classes = q.classes;
  S.i = Math.max(0, focus ? S.items.findIndex((it) => it.id === focus) : 0);
  await stats();
  render();
}
function bars(it) {
  return S.classes.map((c, k) => {
    const p = it.probs[c] || 0, t = it.teacher_probs[c] || 0;
    return `<div class="row"><span>${k + 1}. ${esc(c)}</span>` +
      `<div class="bar"><span style="width:${(100 * p).toFixed(1)}%"></span><i>${p.toFixed(2)}</i></div>` +
      `<div class="bar t"><span style="width:${(100 * t).toFixed(1)}%"></span><i>${t.toFixed(2)}</i></div></div>`;
  }).join('');
}
function render() {
  const it = S.items[S.i];
  $('card').hidden = !it; $('empty').hidden = !!it;
  if (!it) { $('card').dataset.id = ''; return; }
  $('card').dataset.id = it.id;
  $('img').src = media(it.id);
  $('frames').innerHTML = it.frames.map((f) => `<img class="${f === it.id ? 'cur' : ''}" src="${media(f)}" alt="">`).join('');
  $('reason').textContent = `${S.strategy}: ${it.reason}`;
  $('label').textContent = it.label;
  $('pool').textContent = `(${it.pool} pool)`;
  $('pred').textContent = it.pred; $('pred-teacher').textContent = it.pred_teacher;
  $('bars').innerHTML = bars(it);
  $('where').textContent = `${S.i + 1}/${S.items.length} · ${it.split} · ${it.kind}` +
    (it.timestamp != null ? ` @ ${it.timestamp.toFixed(1)} s` : '') + ` · ${it.path}`;
  $('keys').innerHTML = S.classes.map((c, k) => `<button data-label="${esc(c)}"><kbd>${k + 1}</kbd>${esc(c)}</button>`).join('') +
    '<button data-label="skip"><kbd>s</kbd>skip</button><button data-undo="1"><kbd>u</kbd>undo</button>';
}
async function assign(label) {
  const it = S.items[S.i];
  if (!it) return;
  try {
    const r = await api('/api/label', {method: 'POST', body: JSON.stringify({id: it.id, label, strategy: S.strategy})});
    const c = r.correction;
    status(label === 'skip' ? `skipped ${it.id.slice(0, 12)}` : `labeled ${it.id.slice(0, 12)} ${c.label} (was ${c.previous})`);
    S.items.splice(S.i, 1);
    if (!S.items.length) await load(S.strategy); else { S.i = Math.min(S.i, S.items.length - 1); render(); }
  } catch (e) { status('error: ' + e.message, true); }
}
async function undo() {
  try {
    const r = await api('/api/undo', {method: 'POST', body: '{}'});
    if (!r.undone) { status('nothing to undo'); return; }
    status(`undone: ${r.undone.item_id.slice(0, 12)} ${r.undone.label || 'skip'}`);
    await load(S.strategy, r.undone.item_id);
  } catch (e) { status('error: ' + e.message, true); }
}
function queue(fn) { S.chain = S.chain.then(fn).catch((e) => status('error: ' + e.message, true)).finally(done); }
function move(d) { if (S.items.length) { S.i = (S.i + d + S.items.length) % S.items.length; render(); } }

document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (/^[1-9]$/.test(e.key)) { const c = S.classes[+e.key - 1]; if (c) queue(() => assign(c)); }
  else if (e.key === 's' || e.key === ' ') { e.preventDefault(); queue(() => assign('skip')); }
  else if (e.key === 'u') queue(undo);
  else if (e.key === 'ArrowRight' || e.key === 'ArrowDown') { e.preventDefault(); move(1); }
  else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') { e.preventDefault(); move(-1); }
});
document.addEventListener('click', (e) => {
  const b = e.target.closest('button');
  if (!b) return;
  if (b.dataset.s) queue(() => load(b.dataset.s));
  else if (b.dataset.label) queue(() => assign(b.dataset.label));
  else if (b.dataset.undo) queue(undo);
  b.blur();
});
queue(() => load(S.strategy));
</script></body></html>
"""
