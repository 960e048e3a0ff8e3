"""The participant's page: one self-contained HTML document (no external resources) driven by `/api/next` and
`/api/vote`. Candidates are chosen by a click or by the keys 1-9; a vote that could not reach the server is said
so, and retrying it never records it twice (a replay answers 409, read as "already recorded")."""

PARTICIPANT_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Preference study</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer">
<style>
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
#instruction{font-size:1.1em;font-weight:600}#prompt{font-size:1.2em;margin:.6em 0;padding:.4em .6em;
background:#f3f5f8;border-radius:4px}#refs img{height:120px;margin-right:6px;border:1px solid #ccc}
#cands{display:flex;flex-wrap:wrap;gap:12px}.cand{border:3px solid transparent;background:none;padding:4px;
cursor:pointer;text-align:center}.cand:hover,.cand:focus{border-color:#3070d0}.cand img{width:256px;height:256px;
object-fit:contain;display:block}#status{min-height:1.4em;color:#a33}#progress{color:#555}
</style></head><body>
<p id="instruction"></p>
<p id="progress"></p>
<div id="trial" hidden>
  <h3>Reference photos of the subject</h3><div id="refs"></div>
  <h3>Prompt</h3><div id="prompt"></div>
  <h3>Candidates <small>(click one, or press its number)</small></h3><div id="cands"></div>
</div>
<p id="status" role="status"></p>
<p id="done" hidden>All trials are done. Thank you!</p>
<button id="retry" hidden>Retry</button>
<script>
"use strict";
const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
let current = null, busy = false, pending = null;
const $ = (id) => document.getElementById(id);
function img(id) { const i = document.createElement("img"); i.src = "/img/" + id + "?t=" + encodeURIComponent(token);
  i.alt = ""; return i; }
function showProgress(p) { $("progress").textContent = "Progress: " + p.done + " of " + p.total + " done"; }
async function load() {
  $("status").textContent = ""; $("retry").hidden = true;
  let r;
  try { r = await fetch("/api/next?t=" + encodeURIComponent(token), {cache: "no-store"}); }
  catch (e) { return offline(load); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { $("status").textContent = data.error || ("error " + r.status); return; }
  $("instruction").textContent = data.instruction; showProgress(data.progress);
  if (data.done) { current = null; $("trial").hidden = true; $("done").hidden = false; return; }
  current = data; $("done").hidden = true; $("trial").hidden = false;
  $("prompt").textContent = data.prompt;
  const refs = $("refs"); refs.replaceChildren(...data.references.map(img));
  const cands = $("cands"); cands.replaceChildren();
  data.candidates.forEach((c, k) => {
    const b = document.createElement("button"); b.className = "cand"; b.dataset.candidate = c.id;
    b.dataset.key = String(k + 1); b.appendChild(img(c.image));
    const label = document.createElement("div"); label.textContent = String(k + 1); b.appendChild(label);
    b.addEventListener("click", () => choose(c.id)); cands.appendChild(b);
  });
}
function offline(again) {
  $("status").textContent = "The study server could not be reached; your choice was not recorded yet. " +
    "Check that it is running, then press Retry.";
  $("retry").hidden = false; $("retry").onclick = again;
}
async function choose(candidate) {
  if (!current || busy) return;
  busy = true; pending = {trial: current.trial, candidate: candidate};
  try { await send(); } finally { busy = false; }
}
async function send() {
  let r;
  try {
    r = await fetch("/api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: token, trial: pending.trial, candidate: pending.candidate})});
  } catch (e) { return offline(async () => { busy = true; try { await send(); } finally { busy = false; } }); }
  const data = await r.json().catch(() => ({}));
  if (r.ok || r.status === 409) { pending = null; return load(); }
  $("status").textContent = data.error || ("error " + r.status);
}
document.addEventListener("keydown", (e) => {
  if (!current || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = parseInt(e.key, 10);
  if (k >= 1 && k <= current.candidates.length) choose(current.candidates[k - 1].id);
});
load();
</script></body></html>
"""
