// DX console: polls DX's admin API with the admin key kept in sessionStorage (never in a URL)
// and draws what it sees. No framework, no build step, no inline script (the page's CSP).
"use strict";

const KEY = "dx-console-key";
const POLL_MS = 1500;     // models, reload status and the followed log
const METRICS_MS = 5000;  // /metrics is bigger: tokens/s is read less often
const POINTS = 120;       // chart history (about 3 minutes at POLL_MS)
const LOG_LINES = 200;
const KEYS_MS = 10000;     // the key list changes rarely

const $ = (id) => document.getElementById(id);
const state = {
  replicas: new Map(),  // id -> last seen replica (for the events list)
  reload: null,         // last /admin/reload answer
  follow: null,         // replica id whose log is shown
  flight: [],           // requests in flight, one point per poll
  tokens: [],           // completion tokens/s, one point per metrics poll
  ttft: [],             // mean time to first token of the requests in that interval
  lastTokens: null,     // [time, total] of the previous metrics poll
  lastLog: "",
  timer: null,
  metricsAt: 0,
  keysAt: 0,
  keysSig: "",
  modelsSig: "",
  playing: null,        // the playground's AbortController while a reply streams
};

function key() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + key(), ...(options.headers || {}) };
  const res = await fetch(path, { ...options, headers, cache: "no-store",
                                  credentials: "omit", redirect: "error" });
  if (res.status === 401 || res.status === 403) {
    const body = await res.json().catch(() => ({}));
    const msg = (body.error && (body.error.message || body.error)) || res.statusText;
    const err = new Error(`${res.status}: ${msg}`);
    err.auth = true;
    throw err;
  }
  return res;
}

async function json(path, options) {
  const res = await api(path, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const msg = (body.error && (body.error.message || body.error)) || res.statusText;
    throw new Error(`${res.status}: ${typeof msg === "string" ? msg : JSON.stringify(msg)}`);
  }
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function event(text, cls) {
  const li = el("li", `${new Date().toLocaleTimeString()}  ${text}`, cls);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = cls || "muted";
}

// --- login -----------------------------------------------------------------------------

function showLogin(error) {
  $("login").hidden = false;
  $("console").hidden = true;
  $("reload").hidden = true;
  $("forget").hidden = true;
  $("login-error").textContent = error || "";
  setStatus("not connected");
  clearTimeout(state.timer);
  state.timer = null;
}

async function connect(k) {
  sessionStorage.setItem(KEY, k);
  try {
    await json("/admin/models?lines=0");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    showLogin(e.auth ? "This key is refused here (" + e.message + ")" : e.message);
    return;
  }
  $("login").hidden = true;
  $("console").hidden = false;
  $("reload").hidden = false;
  $("forget").hidden = false;
  $("key").value = "";
  tick();
}

// --- polling ---------------------------------------------------------------------------

async function tick() {
  clearTimeout(state.timer);
  if (!key()) return;
  if (!document.hidden) {
    try {
      const [models, reload] = await Promise.all([
        json("/admin/models?lines=0"), json("/admin/reload")]);
      renderModels(models.models);
      fillModels(models.models);
      renderReload(reload);
      if (state.follow && state.replicas.has(state.follow)) await followLog();
      if (Date.now() - state.keysAt >= KEYS_MS) {
        state.keysAt = Date.now();
        renderKeys((await json("/admin/keys")).keys);
      }
      if (Date.now() - state.metricsAt >= METRICS_MS) {
        state.metricsAt = Date.now();
        await readMetrics();
      }
      setStatus("live · " + new Date().toLocaleTimeString(), "");
    } catch (e) {
      if (e.auth) { sessionStorage.removeItem(KEY); showLogin(e.message); return; }
      setStatus("error: " + e.message, "error");
    }
  }
  state.timer = setTimeout(tick, POLL_MS);
}

function renderModels(models) {
  const body = $("models").tBodies[0];
  const sig = JSON.stringify(models) + "|" + state.follow;
  if (sig === state.modelsSig) {  // unchanged: no DOM work, only the chart moves on
    push(state.flight, state.flight.at(-1) ?? 0);
    chart($("chart-flight"), state.flight, "#2f5bd3");
    return;
  }
  state.modelsSig = sig;
  const rows = [];
  let flight = 0;
  const seen = new Set();
  for (const m of models) {
    const replicas = m.replicas.length ? m.replicas : [null];
    replicas.forEach((r, i) => {
      const tr = el("tr");
      const cell = (label, text, cls) => {
        const td = el("td", text, cls);
        td.dataset.label = label;
        tr.append(td);
        return td;
      };
      cell("model", i === 0 ? m.name : "");
      if (r) {
        seen.add(r.id);
        flight += r.in_flight;
        noteReplica(r);
        tr.className = "replica" + (r.id === state.follow ? " selected" : "");
        tr.dataset.replica = r.id;
        tr.addEventListener("click", () => follow(r.id));
        cell("replica", r.id);
        const st = cell("state", r.state + (r.gave_up ? " (gave up)" : ""), "state state-" + r.state);
        st.dataset.state = r.state;
        const s = r.settings || {};
        const extra = Object.entries(s).map(([k, v]) => `${k}=${v}`).join(" ");
        cell("device", [r.device, extra].filter(Boolean).join(" · "));
        cell("slots", `${r.in_flight}/${r.capacity}`);
      } else {
        cell("replica", "—");
        const st = cell("state", "not loaded", "state state-stopped");
        st.dataset.state = "not loaded";
        cell("device", m.device || "");
        cell("slots", "");
      }
      cell("waiting", i === 0 ? m.waiting : "");
      cell("restarts", r ? r.restarts : "");
      cell("error", r ? r.error : (m.placement_note || ""), "err");
      const actions = cell("actions", "");
      if (i === 0) {
        const loaded = m.replicas.length > 0;
        const asleep = loaded && m.replicas.some((x) => x.state === "sleeping" || x.state === "waking");
        const ready = m.replicas.some((x) => x.state === "ready");
        const buttons = [];
        if (!loaded) buttons.push(["load", "Load"]);
        if (asleep) buttons.push(["load", "Wake"]);  // loading a sleeping model wakes it
        if (ready && m.engine === "vllm") buttons.push(["sleep", "Sleep"]);
        if (loaded) buttons.push(["unload", "Unload"]);
        for (const [action, label] of buttons) {
          const b = el("button", label);
          b.type = "button";
          b.dataset.action = action;
          b.dataset.model = m.name;
          b.addEventListener("click", (ev) => { ev.stopPropagation(); act(b, m.name, action); });
          actions.append(b, " ");
        }
      }
      rows.push(tr);
    });
  }
  for (const id of [...state.replicas.keys()]) {
    if (!seen.has(id)) { event(`${id}: gone`); state.replicas.delete(id); }
  }
  body.replaceChildren(...rows);
  if (state.follow) {
    $("log-title").textContent = state.follow +
      (seen.has(state.follow) ? "" : " (not running: its last output is kept)");
  }
  push(state.flight, flight);
  chart($("chart-flight"), state.flight, "#2f5bd3");
}

function noteReplica(r) {
  const old = state.replicas.get(r.id);
  if (!old) event(`${r.id}: ${r.state}`);
  else {
    if (old.state !== r.state) event(`${r.id}: ${old.state} → ${r.state}`, r.state === "failed" ? "error" : "");
    if (r.restarts > old.restarts) event(`${r.id}: restarted (${r.restarts})`, "error");
    if (r.error && r.error !== old.error) event(`${r.id}: ${r.error}`, "error");
  }
  state.replicas.set(r.id, r);
}

function renderReload(r) {
  const prev = state.reload;
  state.reload = r;
  const when = r.last_at ? new Date(r.last_at * 1000).toLocaleString() : "never";
  let text = `${r.ok} applied, ${r.failed} refused · last: ${when}`;
  if (r.last_trigger) text += ` (${r.last_trigger})`;
  if (r.in_progress) text += " · reloading…";
  if (r.last_error) text += `\n${r.last_error}`;
  if (r.last_warnings && r.last_warnings.length) text += "\n" + r.last_warnings.join("\n");
  const p = $("reload-status");
  p.textContent = text;
  p.className = r.last_error ? "error" : "";
  if (prev && (prev.ok !== r.ok || prev.failed !== r.failed)) {
    event(r.last_error ? `config reload refused: ${r.last_error}` : "config reloaded",
          r.last_error ? "error" : "");
  }
}

async function readMetrics() {
  const res = await api("/metrics");
  if (!res.ok) return;
  const text = await res.text();
  // Sums over every label: completion tokens, and TTFT's histogram sum and count.
  const sums = { dx_completion_tokens_total: 0, dx_time_to_first_token_seconds_sum: 0,
                 dx_time_to_first_token_seconds_count: 0 };
  for (const line of text.split("\n")) {
    const name = line.split(/[{ ]/, 1)[0];
    if (name in sums) sums[name] += parseFloat(line.split(" ").pop()) || 0;
  }
  const now = Date.now() / 1000;
  if (state.lastTokens) {
    const [t, old] = state.lastTokens;
    const d = (k) => Math.max(0, sums[k] - old[k]);
    push(state.tokens, d("dx_completion_tokens_total") / Math.max(0.001, now - t));
    const n = d("dx_time_to_first_token_seconds_count");
    push(state.ttft, n ? d("dx_time_to_first_token_seconds_sum") / n : 0);
    chart($("chart-tokens"), state.tokens, "#137333");
    chart($("chart-ttft"), state.ttft, "#a05a00");
  }
  state.lastTokens = [now, sums];
}

// --- the followed log ------------------------------------------------------------------

function follow(id) {
  state.follow = id;
  state.lastLog = "";
  $("log-title").textContent = id;
  $("log").textContent = "";
  for (const tr of $("models").tBodies[0].rows) {
    tr.classList.toggle("selected", tr.dataset.replica === id);
  }
  followLog().catch((e) => setStatus("error: " + e.message, "error"));
}

async function followLog() {
  const id = state.follow;
  let body;
  try {
    body = await json(`/admin/replicas/${encodeURIComponent(id)}/log?lines=${LOG_LINES}`);
  } catch (e) {
    if (e.auth) throw e;
    $("log-title").textContent = `${id} (${e.message})`;
    return;
  }
  const text = body.output.join("\n");
  if (text === state.lastLog) return;
  state.lastLog = text;
  const pre = $("log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = text;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// --- actions ---------------------------------------------------------------------------

async function act(button, model, action) {
  button.disabled = true;
  event(`${model}: ${action} asked`);
  try {
    await json(`/admin/models/${encodeURIComponent(model)}/${action}`, { method: "POST" });
    event(`${model}: ${action} done`);
  } catch (e) {
    event(`${model}: ${action} failed: ${e.message}`, "error");
  } finally {
    button.disabled = false;
    tick();
  }
}

async function reloadConfig() {
  const b = $("reload");
  b.disabled = true;
  event("config reload asked");
  try {
    const res = await api("/admin/reload", { method: "POST" });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) event(`config reload refused: ${body.last_error || body.error || res.status}`, "error");
  } catch (e) {
    event(`config reload failed: ${e.message}`, "error");
  } finally {
    b.disabled = false;
    tick();
  }
}

// --- keys ------------------------------------------------------------------------------

function renderKeys(keys) {
  const sig = JSON.stringify(keys);
  if (sig === state.keysSig) return;  // unchanged: keep the rows (and an armed button)
  state.keysSig = sig;
  const rows = keys.map((k) => {
    const tr = el("tr");
    tr.dataset.key = k.name;
    const cell = (label, text) => { const td = el("td", text); td.dataset.label = label; tr.append(td); return td; };
    cell("name", k.name);
    cell("starts with", k.prefix ? k.prefix + "…" : "");
    cell("scope", (k.models ? k.models.join(", ") : "all models") + (k.admin ? " · admin" : ""));
    cell("expires", k.expires ? new Date(k.expires * 1000).toLocaleString() : "never");
    const b = el("button", "Revoke");
    b.type = "button";
    b.dataset.action = "revoke";
    b.addEventListener("click", () => revokeKey(b, k.name));
    cell("", "").append(b);
    return tr;
  });
  if (!rows.length) {
    const td = el("td", "no stored keys (dx keys create NAME)", "muted");
    td.colSpan = 5;
    rows.push(el("tr"));
    rows[0].append(td);
  }
  $("keys").tBodies[0].replaceChildren(...rows);
}

async function revokeKey(button, name) {
  // Two clicks: the first arms the button for 4 s, the second revokes.
  if (button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.textContent = "Really revoke?";
    setTimeout(() => { button.dataset.armed = ""; button.textContent = "Revoke"; }, 4000);
    return;
  }
  button.disabled = true;
  try {
    await json(`/admin/keys/${encodeURIComponent(name)}/revoke`, { method: "POST" });
    event(`key ${name}: revoked`);
  } catch (e) {
    event(`key ${name}: revoke failed: ${e.message}`, "error");
    if (e.auth) throw e;
  }
  state.keysAt = 0;
  state.keysSig = "";
  tick();
}

// --- playground: a streamed chat to any model (OpenAI's API, with the admin key) ----------

function fillModels(models) {
  const select = $("play-model");
  const names = models.map((m) => m.name);
  const have = [...select.options].map((o) => o.value);
  if (names.join("\n") === have.join("\n")) return;
  const keep = select.value;
  select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
  if (names.includes(keep)) select.value = keep;
}

async function play() {
  const model = $("play-model").value, prompt = $("play-prompt").value.trim();
  if (!model || !prompt) return;
  const out = $("play-out"), stats = $("play-stats");
  out.textContent = "";
  stats.textContent = "";
  const abort = new AbortController();
  state.playing = abort;
  $("play-send").disabled = true;
  $("play-stop").disabled = false;
  const started = performance.now();
  let first = null, chunks = 0;
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST", signal: abort.signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, stream: true, max_tokens: parseInt($("play-max").value, 10) || 256,
                             messages: [{ role: "user", content: prompt }] }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(`${res.status}: ${(body.error && (body.error.message || body.error)) || res.statusText}`);
    }
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const delta = JSON.parse(data).choices?.[0]?.delta?.content;
        if (delta) {
          if (first === null) first = performance.now();
          chunks += 1;
          out.textContent += delta;
        }
      }
    }
    const total = (performance.now() - started) / 1000;
    stats.textContent = `done · ${chunks} chunks · first token ${first ? ((first - started) / 1000).toFixed(2) : "–"} s · ${total.toFixed(2)} s`;
  } catch (e) {
    stats.textContent = abort.signal.aborted ? "stopped" : "error: " + e.message;
    if (e.auth) { sessionStorage.removeItem(KEY); showLogin(e.message); }
  } finally {
    state.playing = null;
    $("play-send").disabled = false;
    $("play-stop").disabled = true;
  }
}

// --- charts ----------------------------------------------------------------------------

function push(series, value) {
  series.push(value);
  if (series.length > POINTS) series.shift();
}

function chart(canvas, series, color) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...series);
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  const fmt = (v) => v.toFixed(v < 1 ? 2 : v < 10 ? 1 : 0);
  g.fillText(`max ${fmt(max)} · now ${fmt(series.at(-1) ?? 0)}`, 4, 12);
  g.strokeStyle = color;
  g.lineWidth = 1.5;
  g.beginPath();
  series.forEach((v, i) => {
    const x = (i / (POINTS - 1)) * w;
    const y = h - 2 - (v / max) * (h - 18);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  if (series.length === 1) g.lineTo(4, h - 2 - (series[0] / max) * (h - 18));  // a first point
  g.stroke();
}

// --- start -----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key").value.trim();
    if (k) connect(k);
  });
  $("reload").addEventListener("click", reloadConfig);
  $("play-form").addEventListener("submit", (ev) => { ev.preventDefault(); play(); });
  $("play-stop").addEventListener("click", () => state.playing && state.playing.abort());
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && key()) tick(); });
  if (key()) connect(key()); else showLogin();
});
