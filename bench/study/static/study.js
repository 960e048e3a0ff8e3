// The participant's page: asks /api/next for the open trial, shows it, and sends the choice to /api/vote.
// A candidate can be chosen (click, or its number key) only once every image of the trial has loaded; an image
// that fails says so and offers Retry. A vote that could not reach the server is said so, and retrying it never
// records it twice (a replay answers 409 "already_voted"). Served as a file: the page runs no inline script.
"use strict";
const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
let current = null;   // the trial shown
let busy = false;     // a vote is on its way
let ready = false;    // every image of the trial loaded
let lastTotal = null; // the progress total shown before
let attempt = 0;      // image retries (a new URL each time, so nothing stale is reused)
let generation = 0;   // which image load is the latest
let imageTrouble = false; // the status line tells of an image that failed
const $ = (id) => document.getElementById(id);

function say(text) { $("status").textContent = text; }
function note(lines) { $("note").textContent = lines.filter(Boolean).join(" "); }

function showProgress(p) {
  $("progress").textContent = "Progress: " + p.done + " of " + p.total + " done";
  let shrunk = "";
  if (lastTotal !== null && p.total < lastTotal) {
    const gone = lastTotal - p.total;
    shrunk = (gone === 1 ? "1 trial" : gone + " trials") + " got all the votes needed from other participants " +
      "before you reached " + (gone === 1 ? "it" : "them") + ", so your total is now " + p.total + ".";
  }
  lastTotal = p.total;
  return shrunk;
}

function offline(again) {
  say("The study server could not be reached; your choice was not recorded yet. " +
      "Check that it is running, then press Retry.");
  $("retry").hidden = false;
  $("retry").onclick = again;
}

function setReady(on) {
  ready = on;
  for (const b of document.querySelectorAll(".cand")) b.disabled = !on;
}

function picture(id) {
  const el = document.createElement("img");
  el.alt = "";
  const done = new Promise((resolve) => {
    el.onload = () => resolve(el.naturalWidth > 0);
    el.onerror = () => resolve(false);
  });
  el.src = "/img/" + id + "?t=" + encodeURIComponent(token) + (attempt ? "&retry=" + attempt : "");
  return {el, done};
}

function loadImages() {
  const gen = ++generation;
  setReady(false);
  $("retry").hidden = true;
  const refs = current.references.map(picture);
  $("refs").replaceChildren(...refs.map((p) => p.el));
  const cands = current.candidates.map((c, k) => {
    const p = picture(c.image);
    document.querySelectorAll(".cand .frame")[k].replaceChildren(p.el);
    return p;
  });
  Promise.all([...cands, ...refs].map((p) => p.done)).then((oks) => {
    if (gen !== generation) return; // a newer load took over
    if (oks.every(Boolean)) {
      if (imageTrouble) say("");
      imageTrouble = false;
      setReady(true);
      return;
    }
    imageTrouble = true;
    const bad = oks.slice(0, cands.length).map((ok, k) => ok ? null : k + 1).filter((k) => k !== null);
    say((bad.length ? "Candidate " + bad.join(", ") : "A reference photo") + " could not be loaded, so " +
        "nothing can be chosen yet (the image may have changed on the server, or the connection failed). " +
        "Press Retry; if it keeps failing, tell the person running the study.");
    $("retry").hidden = false;
    $("retry").onclick = () => { attempt += 1; loadImages(); };
  });
}

async function load(notes) {
  say("");
  $("retry").hidden = true;
  let r;
  try { r = await fetch("/api/next?t=" + encodeURIComponent(token), {cache: "no-store"}); }
  catch (e) { return offline(() => load(notes)); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { say(data.error || ("error " + r.status)); return; }
  $("instruction").textContent = data.instruction;
  note([...(notes || []), showProgress(data.progress)]);
  if (data.done) { current = null; $("trial").hidden = true; $("done").hidden = false; return; }
  current = data;
  $("done").hidden = true;
  $("trial").hidden = false;
  $("prompt").textContent = data.prompt;
  $("cands").replaceChildren(...data.candidates.map((c, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "cand";
    b.dataset.candidate = c.id;
    b.disabled = true;
    const frame = document.createElement("span");
    frame.className = "frame";
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = String(k + 1);
    b.append(frame, key);
    b.addEventListener("click", () => choose(c.id));
    return b;
  }));
  loadImages();
}

async function choose(candidate) {
  if (!current || busy || !ready) return;
  busy = true;
  try { await send({trial: current.trial, candidate: candidate}); } finally { busy = false; }
}

async function send(choice) {
  let r;
  try {
    r = await fetch("/api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: token, trial: choice.trial, candidate: choice.candidate})});
  } catch (e) {
    return offline(async () => { busy = true; try { await send(choice); } finally { busy = false; } });
  }
  const data = await r.json().catch(() => ({}));
  if (r.ok) return load([]);
  if (r.status === 409 && data.reason === "already_voted") return load(["Your choice on that trial was already recorded."]);
  if (r.status === 409 && data.reason === "trial_full") {
    return load(["That trial got all the votes it needs from other participants while you were on it, so your " +
                 "choice was not counted. Here is the next trial."]);
  }
  if (r.status === 409 && data.reason === "not_shown") {
    attempt += 1;
    loadImages();
    return say(data.error);
  }
  say(data.error || ("error " + r.status));
}

document.addEventListener("keydown", (e) => {
  if (!current || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = parseInt(e.key, 10);
  if (k >= 1 && k <= current.candidates.length) choose(current.candidates[k - 1].id);
});
load([]);
