"""The single self-contained chat page served at `/` by `tunesmith serve` (inline CSS and JS, no
external requests). It talks to the same `POST /v1/chat/completions` endpoint as any OpenAI client,
with `stream: true`, and reads the `tunesmith` extension field of the first chunk for the crisis
banner and the emotion/strategy badges. Once a reply is flagged, a "Crisis support" bar stays pinned
above the conversation until "New chat" (the server reports `session_flagged` on every later reply).

Kept as a Python string rather than a package-data file so that it ships with the code in every
install mode. `__CONFIG__` is replaced with JSON (model name, locales, default locale).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunesmith chat</title>
<style>
:root { --bg:#f5f6f8; --fg:#1d2330; --muted:#667085; --user:#dbeafe; --bot:#ffffff; --warn:#b42318; --warnbg:#fef3f2; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--fg);
       display:flex; flex-direction:column; height:100vh; }
header { padding:.6rem 1rem; background:#111827; color:#fff; display:flex; gap:.8rem; align-items:center; flex-wrap:wrap; }
header h1 { font-size:1rem; margin:0; font-weight:600; }
header .model { color:#9ca3af; font-size:.85rem; }
header .spacer { flex:1; }
header label { font-size:.85rem; }
header select, header button { font:inherit; font-size:.85rem; }
#log { flex:1; overflow-y:auto; padding:1rem; display:flex; flex-direction:column; gap:.75rem; width:100%; max-width:820px; margin:0 auto; }
.msg { padding:.6rem .8rem; border-radius:10px; max-width:85%; box-shadow:0 1px 2px rgba(0,0,0,.07); }
.msg.user { align-self:flex-end; background:var(--user); white-space:pre-wrap; }
.msg.assistant { align-self:flex-start; background:var(--bot); }
.msg .body { white-space:pre-wrap; word-wrap:break-word; }
.msg[data-state="waiting"] .body::after { content:"…"; color:var(--muted); }
.banner { border:2px solid var(--warn); background:var(--warnbg); color:#7a271a; border-radius:8px; padding:.5rem .7rem;
          margin-bottom:.5rem; white-space:pre-wrap; }
.banner .title { display:block; color:var(--warn); font-weight:700; margin-bottom:.2rem; }
.banner a { color:#912018; }
.badges { display:flex; gap:.35rem; margin-bottom:.3rem; flex-wrap:wrap; }
.badges:empty { display:none; }
.badge { font-size:.75rem; background:#eef2ff; color:#3730a3; border-radius:999px; padding:.05rem .55rem; }
.badge.crisis { background:#fee4e2; color:var(--warn); }
.error { color:var(--warn); }
form { display:flex; gap:.5rem; padding:.75rem 1rem; width:100%; max-width:820px; margin:0 auto; }
textarea { flex:1; resize:none; padding:.55rem .7rem; border-radius:8px; border:1px solid #d0d5dd; font:inherit; height:3rem; }
button.primary { padding:.5rem 1.1rem; border-radius:8px; border:0; background:#2563eb; color:#fff; font:inherit; cursor:pointer; }
button:disabled { opacity:.5; cursor:default; }
#sticky { max-width:820px; width:100%; margin:.5rem auto 0; border:2px solid var(--warn); background:var(--warnbg);
          color:#7a271a; border-radius:8px; padding:.35rem .7rem; font-size:.85rem; }
#sticky summary { cursor:pointer; color:var(--warn); font-weight:700; }
#sticky div { white-space:pre-wrap; margin-top:.3rem; }
footer { font-size:.75rem; color:var(--muted); text-align:center; padding:0 1rem .6rem; }
</style>
</head>
<body>
<header>
  <h1>tunesmith chat</h1><span class="model" id="model"></span><span class="spacer"></span>
  <label>Crisis resources for <select id="locale" aria-label="Crisis resources locale"></select></label>
  <button type="button" id="reset">New chat</button>
</header>
<details id="sticky" hidden><summary>Crisis support: resources stay here for this conversation</summary><div id="sticky-text"></div></details>
<main id="log" role="log" aria-live="polite"></main>
<form id="form">
  <textarea id="input" placeholder="Type a message. Enter sends, Shift+Enter adds a line." aria-label="Message"></textarea>
  <button class="primary" id="send">Send</button>
</form>
<footer>A small local model: it can be wrong. If you or someone else is in danger, contact emergency services or a helpline.</footer>
<script id="cfg" type="application/json">__CONFIG__</script>
<script>
"use strict";
const cfg = JSON.parse(document.getElementById("cfg").textContent);
const log = document.getElementById("log"), form = document.getElementById("form");
const input = document.getElementById("input"), send = document.getElementById("send");
const localeSel = document.getElementById("locale");
const sticky = document.getElementById("sticky"), stickyText = document.getElementById("sticky-text");
{ const o = document.createElement("option"); o.value = ""; o.textContent = "the message's language"; localeSel.appendChild(o); }
document.getElementById("model").textContent = cfg.model + (cfg.heads ? " · emotion/strategy heads" : "");
for (const [code, name] of cfg.locales) {
  const o = document.createElement("option"); o.value = code; o.textContent = name + " (" + code + ")"; localeSel.appendChild(o);
}
const saved = localStorage.getItem("tunesmith.locale");
localeSel.value = saved !== null && (saved === "" || cfg.locales.some(l => l[0] === saved)) ? saved : cfg.locale;
localeSel.addEventListener("change", () => localStorage.setItem("tunesmith.locale", localeSel.value));
let history = [];
let busy = false;

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
// Text with clickable https links, built from text nodes (never innerHTML: replies are untrusted).
function linkify(el, text) {
  el.textContent = "";
  const re = /https?:\/\/[^\s)]+/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    el.appendChild(document.createTextNode(text.slice(last, m.index)));
    const a = node("a", "", m[0]); a.href = m[0]; a.target = "_blank"; a.rel = "noopener noreferrer"; el.appendChild(a);
    last = m.index + m[0].length;
  }
  el.appendChild(document.createTextNode(text.slice(last)));
}
function scrollDown() { log.scrollTop = log.scrollHeight; }

function showMeta(meta, view) {
  const c = meta.crisis || {};
  if (c.flagged && c.banner) {
    view.bannerText = c.banner;
    view.banner.hidden = false;
    view.banner.textContent = "";
    view.banner.appendChild(node("span", "title", "Crisis support"));
    const t = node("span"); linkify(t, c.banner); view.banner.appendChild(t);
    view.badges.appendChild(node("span", "badge crisis", "crisis: " + String(c.category).replace(/_/g, " ")));
    view.msg.dataset.crisis = c.category;
  }
  if (c.session_flagged && c.session_banner) {  // pinned until "New chat"
    linkify(stickyText, c.session_banner);
    sticky.hidden = false;
  }
  if (meta.emotion) view.badges.appendChild(node("span", "badge emotion", "emotion: " + meta.emotion.label + " " + Math.round(meta.emotion.prob * 100) + "%"));
  if (meta.strategy) view.badges.appendChild(node("span", "badge strategy", "strategy: " + meta.strategy.label + " " + Math.round(meta.strategy.prob * 100) + "%"));
}

// The streamed content starts with the banner when flagged; the banner has its own box, so the
// body shows only what follows it.
function modelPart(view) {
  const b = view.bannerText;
  if (b && view.full.startsWith(b)) return view.full.slice(b.length).replace(/^\s+/, "");
  if (b && b.startsWith(view.full)) return "";
  return view.full;
}

async function sendMessage(text) {
  busy = true; send.disabled = true;
  history.push({role: "user", content: text});
  log.appendChild(node("div", "msg user", text));
  const msg = node("div", "msg assistant"); msg.dataset.state = "waiting"; msg.dataset.chunks = "0";
  const view = {msg, badges: node("div", "badges"), banner: node("div", "banner"), body: node("div", "body"), full: "", bannerText: "", meta: null};
  view.banner.hidden = true;
  view.banner.setAttribute("role", "alert");
  msg.append(view.badges, view.banner, view.body);
  log.appendChild(msg); scrollDown();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: cfg.model, messages: history, stream: true, locale: localeSel.value || null}),
    });
    if (!resp.ok) {
      const e = await resp.json().catch(() => ({}));
      throw new Error((e.error && e.error.message) || resp.statusText);
    }
    const reader = resp.body.getReader(), dec = new TextDecoder();
    let buf = "", finished = false;
    while (!finished) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") { finished = true; break; }
          const obj = JSON.parse(data);
          if (obj.error) throw new Error(obj.error.message);
          if (obj.tunesmith && !view.meta) { view.meta = obj.tunesmith; showMeta(obj.tunesmith, view); }  // first chunk; the last repeats it
          const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
          if (delta && delta.content) {
            if (!view.full) msg.dataset.firstChunk = delta.content.slice(0, 80);
            view.full += delta.content;
            msg.dataset.chunks = String(Number(msg.dataset.chunks) + 1);
            msg.dataset.state = "streaming";
            view.body.textContent = modelPart(view);
            scrollDown();
          }
        }
      }
    }
    msg.dataset.state = "done";
  } catch (err) {
    msg.dataset.state = "error";
    view.body.appendChild(node("div", "error", "Error: " + err.message));
  }
  if (msg.dataset.state === "done") {
    // the history keeps the model's words only; the banner is shown, not re-sent
    history.push({role: "assistant", content: modelPart(view)});
  } else {
    history.pop();  // a failed turn is not part of the conversation
  }
  busy = false; send.disabled = false; input.focus();
}

form.addEventListener("submit", ev => {
  ev.preventDefault();
  const text = input.value.trim();
  if (!text || busy) return;
  input.value = "";
  sendMessage(text);
});
input.addEventListener("keydown", ev => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
});
document.getElementById("reset").addEventListener("click", () => { if (!busy) { history = []; log.textContent = ""; sticky.hidden = true; stickyText.textContent = ""; input.focus(); } });
input.focus();
</script>
</body>
</html>
"""
