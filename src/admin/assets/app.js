// infergate dashboard: snapshot over server-sent events (/api/v1/events),
// history from /api/v1/series, charts drawn on canvas. No framework.
"use strict";
const WINDOW = 300; // seconds shown in charts
const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf", "#ff7b72", "#e3b341",
  "#7ee787", "#79c0ff", "#d2a8ff", "#ffa657"];
const history = new Map(); // "pool/node" -> {t:[], rate:[], p99:[]}
const poolEls = new Map();
let last = null;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const ms = (s) => (s == null ? "–" : s < 1 ? (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms" : s.toFixed(2) + " s");
const num = (n, d = 0) => (n == null ? "–" : Number(n).toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: d }));
const pct = (x, d = 1) => (x == null ? "–" : (x * 100).toFixed(d) + "%");
const dur = (s) => (s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m " + (s % 60) + "s" : Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m");

function series(key) {
  let h = history.get(key);
  if (!h) { h = { t: [], rate: [], p99: [] }; history.set(key, h); }
  return h;
}

function push(key, t, rate, p99) {
  const h = series(key);
  if (h.t.length && h.t[h.t.length - 1] >= t) return;
  h.t.push(t); h.rate.push(rate); h.p99.push(p99);
  while (h.t.length > WINDOW) { h.t.shift(); h.rate.shift(); h.p99.shift(); }
}

async function loadHistory() {
  try {
    const r = await fetch("/api/v1/series?window=" + WINDOW);
    const s = await r.json();
    for (const n of s.nodes) {
      const key = n.pool + "/" + n.node;
      s.t.forEach((t, i) => {
        if (n.requests[i] == null) return;
        push(key, t, n.requests[i], n.p99_ms[i] == null ? null : n.p99_ms[i] / 1000);
      });
    }
  } catch (e) { /* live data still arrives */ }
}

function poolSection(pool) {
  let el = poolEls.get(pool.name);
  if (el) return el;
  const sec = document.createElement("section");
  sec.className = "panel pool";
  sec.innerHTML = `
    <div class="pool-head"><h2>Pool <span class="pname"></span></h2>
      <div class="kpi"><span>healthy</span><b class="k-healthy"></b></div>
      <div class="kpi"><span>rate</span><b class="k-rate"></b></div>
      <div class="kpi"><span>p99 latency</span><b class="k-p99"></b></div>
      <div class="kpi"><span>p99 TTFT</span><b class="k-ttft"></b></div>
      <div class="kpi"><span>shed</span><b class="k-shed"></b></div>
      <div class="kpi"><span>imbalance</span><b><span class="badge k-imb"></span></b></div>
      <div class="kpi k-panic-wrap"><span>mode</span><b class="k-panic"></b></div>
    </div>
    <div class="charts">
      <div class="chart"><div class="title">requests / s per node</div><canvas class="c-rate"></canvas><div class="legend l-rate"></div></div>
      <div class="chart"><div class="title">p99 latency per node (per second)</div><canvas class="c-p99"></canvas><div class="legend l-p99"></div></div>
    </div>
    <div class="tablewrap"><table>
      <thead><tr><th class="l">node</th><th class="l">state</th><th>req/s</th><th class="l">share (▮ actual, | expected)</th>
      <th>dev</th><th>in flight</th><th>p50</th><th>p99</th><th>TTFT p50</th><th>TTFT p99</th><th class="l" title="From the node's own /metrics: running · waiting · KV cache use, the reading's age and the scrape state">node metrics</th><th>errors</th>
      <th>requests</th><th>ejections</th><th class="l">reason</th></tr></thead>
      <tbody></tbody></table></div>`;
  sec.querySelector(".pname").textContent = pool.name;
  $("pools").appendChild(sec);
  el = {
    sec, tbody: sec.querySelector("tbody"),
    rate: sec.querySelector(".c-rate"), p99: sec.querySelector(".c-p99"),
    lrate: sec.querySelector(".l-rate"), lp99: sec.querySelector(".l-p99"),
  };
  poolEls.set(pool.name, el);
  return el;
}

// What the node's own /metrics said (scraped by [pools.capacity]) and how
// healthy that scraping is; "–" when the pool does not scrape.
function scrapeCell(s) {
  if (!s) return `<td class="l muted">–</td>`;
  const f = s.failures;
  const title = `scrape ${s.state}${s.reason ? " (" + s.reason + ")" : ""}; failures: timeout ${f.timeout}, connect ${f.connect}, status ${f.status}, parse ${f.parse}` +
    (s.weight == null ? "" : `; routing weight ${s.weight.toFixed(2)}`) +
    (s.lora_adapters && s.lora_adapters.length ? `; LoRA adapters (max ${s.max_lora ?? "?"}): ${s.lora_adapters.join(", ")}` : "");
  const cls = s.state === "ok" ? "ok" : s.state === "stale" ? "warn" : s.state === "failing" ? "bad" : "";
  const reading = s.running == null ? "no reading" :
    `run ${s.running} · wait ${s.waiting}${s.kv_usage == null ? "" : " · KV " + pct(s.kv_usage, 0)} <span class="muted">${s.age_s.toFixed(1)}s</span>`;
  const lora = s.lora_adapters && s.lora_adapters.length ? ` <span class="muted">LoRA ${s.lora_adapters.length}/${s.max_lora ?? "?"}</span>` : "";
  return `<td class="l" title="${esc(title)}">${reading}${lora} <span class="badge ${cls}">${esc(s.state)}${s.reason ? " " + esc(s.reason) : ""}</span></td>`;
}

function devClass(d) { return d == null ? "dev-ok" : d > 0.5 ? "dev-bad" : d > 0.25 ? "dev-warn" : "dev-ok"; }

function renderPool(pool, snap) {
  const el = poolSection(pool);
  const q = (c) => el.sec.querySelector(c);
  q(".k-healthy").textContent = `${pool.healthy} / ${pool.total}`;
  q(".k-healthy").style.color = pool.healthy === pool.total ? "var(--ok)" : pool.healthy === 0 ? "var(--bad)" : "var(--warn)";
  q(".k-rate").textContent = num(pool.rate, 1) + " /s";
  q(".k-p99").textContent = ms(pool.p99);
  q(".k-ttft").textContent = ms(pool.ttft_p99);
  q(".k-shed").textContent = num(pool.shed_rate, 1) + " /s";
  q(".k-shed").style.color = pool.shed_rate > 0 ? "var(--warn)" : "";
  const imb = pool.imbalance;
  const badge = q(".k-imb");
  badge.className = "badge k-imb " + imb.level;
  badge.textContent = imb.level === "idle" ? "idle" :
    `max dev ${pct(imb.max_deviation, 0)} · max/min ${imb.max_min_ratio == null ? "–" : imb.max_min_ratio.toFixed(2)}`;
  badge.title = "Largest deviation of a node's share from its expected share (weights among available nodes), and max/min of share/expected, over the last " + snap.recent_s + " s";
  q(".k-panic").textContent = pool.panic ? "PANIC" : "normal";
  q(".k-panic").style.color = pool.panic ? "var(--bad)" : "var(--ok)";

  const rows = [];
  for (const n of pool.nodes) {
    const dev = n.expected_share > 0 && imb.level !== "idle" ? n.share / n.expected_share - 1 : null;
    const sat = n.max_concurrent ? ` <span class="muted">(${Math.round((100 * n.in_flight) / n.max_concurrent)}%)</span>` : "";
    const w = Math.min(100, n.share * 100), e = Math.min(100, n.expected_share * 100);
    const scale = Math.max(w, e, 1) > 50 ? 1 : 2; // small shares drawn at 2x
    rows.push(`<tr>
      <td class="l" title="${esc(n.addr)} · weight ${n.weight} · from ${esc(n.source || "config")}"><b>${esc(n.name)}</b> <span class="muted">w${n.weight}${n.source && n.source !== "config" ? " · " + esc(n.source) : ""}</span></td>
      <td class="l"><span class="state ${n.state}">${n.state}</span> <span class="muted">${dur(n.since_s)}</span></td>
      <td>${num(n.rate, 1)}</td>
      <td class="l"><span class="share"><span class="fill" style="width:${w * scale}%"></span><span class="exp" style="left:${e * scale}%"></span></span>${pct(n.share, 1)} <span class="muted">/ ${pct(n.expected_share, 1)}</span></td>
      <td class="${devClass(dev == null ? null : Math.abs(dev))}">${dev == null ? "–" : (dev > 0 ? "+" : "") + (dev * 100).toFixed(0) + "%"}</td>
      <td>${num(n.in_flight)}${sat}</td>
      <td>${ms(n.p50)}</td><td>${ms(n.p99)}</td><td>${ms(n.ttft_p50)}</td><td>${ms(n.ttft_p99)}</td>
      ${scrapeCell(n.scrape)}
      <td class="${n.error_rate > 0.01 ? "err" : ""}">${pct(n.error_rate, 1)}</td>
      <td>${num(n.requests)}</td><td>${n.ejections}</td>
      <td class="l reason" title="${esc(n.reason)}">${esc(n.reason)}</td></tr>`);
  }
  el.tbody.innerHTML = rows.join("");
  const keys = pool.nodes.map((n) => pool.name + "/" + n.name);
  draw(el.rate, el.lrate, keys, "rate", (v) => num(v, 0));
  draw(el.p99, el.lp99, keys, "p99", (v) => ms(v));
}

function draw(canvas, legend, keys, field, fmt) {
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth, H = canvas.clientHeight;
  if (canvas.width !== W * dpr || canvas.height !== H * dpr) { canvas.width = W * dpr; canvas.height = H * dpr; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  let tmax = 0, vmax = 0, tfirst = Infinity;
  for (const k of keys) {
    const h = history.get(k); if (!h || !h.t.length) continue;
    tmax = Math.max(tmax, h.t[h.t.length - 1]);
    tfirst = Math.min(tfirst, h.t[0]);
    for (const v of h[field]) if (v != null && v > vmax) vmax = v;
  }
  if (!tmax) { legend.textContent = "waiting for data…"; return; }
  vmax = vmax > 0 ? vmax * 1.1 : 1;
  // Span the data we have (at least a minute), up to the whole window.
  const span = Math.min(WINDOW * 1000, Math.max(60000, tmax - tfirst));
  const tmin = tmax - span, L = 46, R = 6, T = 6, B = 16;
  const x = (t) => L + ((t - tmin) / (tmax - tmin)) * (W - L - R);
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  ctx.strokeStyle = "#2a313c"; ctx.fillStyle = "#8a94a3"; ctx.font = "10px sans-serif"; ctx.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const v = (vmax * i) / 3, yy = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(W - R, yy); ctx.stroke();
    ctx.fillText(fmt(v), 2, yy + 3);
  }
  const step = span > 120000 ? 60000 : 15000;
  for (let d = 0; d <= span; d += step) {
    const xx = x(tmax - d);
    const label = d === 0 ? "now" : step === 60000 ? "-" + d / 60000 + "m" : "-" + d / 1000 + "s";
    ctx.fillText(label, Math.max(L, xx - 10), H - 3);
  }
  // With many nodes, draw all thin and name only the busiest.
  const many = keys.length > PALETTE.length;
  const ranked = keys.map((k, i) => {
    const h = history.get(k); const arr = h ? h[field] : [];
    return { k, i, last: arr.length ? arr[arr.length - 1] || 0 : 0 };
  });
  ctx.lineWidth = many ? 1 : 1.6;
  for (const r of ranked) {
    const h = history.get(r.k); if (!h) continue;
    ctx.strokeStyle = PALETTE[r.i % PALETTE.length];
    if (many) ctx.globalAlpha = 0.55;
    ctx.beginPath(); let pen = false;
    for (let j = 0; j < h.t.length; j++) {
      const v = h[field][j];
      if (v == null || h.t[j] < tmin) { pen = false; continue; }
      const px = x(h.t[j]), py = y(v);
      if (pen) ctx.lineTo(px, py); else { ctx.moveTo(px, py); pen = true; }
    }
    ctx.stroke(); ctx.globalAlpha = 1;
  }
  const shown = many ? ranked.slice().sort((a, b) => b.last - a.last).slice(0, 8) : ranked;
  legend.innerHTML = shown.map((r) => `<span><i style="background:${PALETTE[r.i % PALETTE.length]}"></i>${esc(r.k.split("/").slice(1).join("/"))}</span>`).join("")
    + (many ? `<span>… ${keys.length} nodes (top 8 by latest value)</span>` : "");
}

function renderAlerts(snap) {
  const active = snap.alerts_active || [];
  $("alert-count").textContent = active.length;
  $("alert-count").style.color = active.length ? "var(--bad)" : "";
  $("alerts-active").innerHTML = active.length
    ? active.map((a) => `<div class="alert ${esc(a.severity)}"><b>${esc(a.rule)}</b>${esc(a.summary)} <span class="muted">since ${new Date(a.started_unix_ms).toLocaleTimeString()}</span></div>`).join("")
    : '<span class="muted">No active alerts.</span>';
  $("alerts-recent").innerHTML = (snap.alerts_recent || []).map((e) =>
    `<li><span class="${e.status}">${e.status}</span> ${new Date(e.at_unix_ms).toLocaleTimeString()} · <b>${esc(e.rule)}</b> ${esc(e.summary)}</li>`).join("")
    || '<li>none yet</li>';
}

function render(snap) {
  last = snap;
  for (const pool of snap.pools) for (const n of pool.nodes) push(pool.name + "/" + n.name, snap.unix_ms, n.rate_1s, n.p99_1s);
  $("uptime").textContent = dur(snap.uptime_s);
  $("updated").textContent = new Date(snap.unix_ms).toLocaleTimeString();
  renderAlerts(snap);
  for (const pool of snap.pools) renderPool(pool, snap);
  renderBudgets(snap);
}

// Per-tenant budgets: tenants are shown by configured name or a short id,
// never by key.
function renderBudgets(snap) {
  const budgets = snap.budgets || [];
  $("budgets").hidden = budgets.length === 0;
  $("budgets-body").innerHTML = budgets.flatMap((b) => b.tenants.length ? b.tenants.map((t) => `<tr>
    <td class="l">${esc(b.route)} <span class="muted">${b.tracked} tracked</span></td><td class="l"><b>${esc(t.tenant)}</b></td>
    <td>${num(t.admitted)}</td><td class="${t.limited_requests ? "err" : ""}">${num(t.limited_requests)}</td>
    <td class="${t.limited_tokens ? "err" : ""}">${num(t.limited_tokens)}</td><td>${num(t.tokens)}</td>
    <td>${t.requests_per_minute == null ? "–" : num(t.requests_per_minute)}</td><td>${t.tokens_per_minute == null ? "–" : num(t.tokens_per_minute)}</td></tr>`)
    : [`<tr><td class="l">${esc(b.route)}</td><td class="l muted" colspan="7">no requests yet</td></tr>`]).join("");
}

let stream = null;
function connect() {
  if (stream) stream.close();
  const es = new EventSource("/api/v1/events");
  stream = es;
  es.addEventListener("snapshot", (ev) => {
    $("live").className = "dot on"; $("live-text").textContent = "live";
    try { render(JSON.parse(ev.data)); } catch (e) { console.error(e); }
  });
  es.onerror = () => {
    $("live").className = "dot off";
    // Closed for good: the listener refused the stream (reads need the token).
    $("live-text").textContent = es.readyState === EventSource.CLOSED ? "no data: enter the admin token in the Console" : "reconnecting…";
  };
}

// The console got a token: a stream refused for want of it can start now.
window.addEventListener("infergate:token", () => {
  if (!stream || stream.readyState === EventSource.CLOSED) loadHistory().then(connect);
  pollConfigStatus();
});

// A refused config reload is shown until a later reload succeeds.
async function pollConfigStatus() {
  try {
    const r = await fetch("/api/v1/config/status");
    const st = await r.json();
    $("config-version").textContent = st.version;
    $("config-error").hidden = !st.last_error;
    $("config-error-text").textContent = st.last_error || "";
  } catch (e) { /* the live dot already shows a lost connection */ }
}

window.addEventListener("resize", () => { if (last) render(last); });
loadHistory().then(connect);
pollConfigStatus();
setInterval(pollConfigStatus, 2000);

// Fleet power & efficiency (GET /api/v1/energy; pools with [pools.energy]).
function energyNum(v, digits) { return v == null ? "–" : Number(v).toFixed(digits); }
function energyEsc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
async function pollEnergy() {
  let data;
  try {
    const r = await fetch("/api/v1/energy");
    if (!r.ok) return;
    data = await r.json();
  } catch (e) { return; }
  const panel = document.getElementById("energy");
  const pools = (data && data.pools) || [];
  panel.hidden = pools.length === 0;
  document.getElementById("energy-pools").innerHTML = pools.map(p => {
    const sources = p.measured_nodes + " measured, " + p.estimated_nodes + " estimated";
    const rows = p.nodes.map(n => "<tr><td class=\"l\">" + energyEsc(n.name) + "</td><td class=\"l\">" + n.state +
      (n.parkable ? " · parkable" : "") + "</td><td>" + (n.active ? "yes" : "no") + "</td><td>" + energyNum(n.watts, 0) +
      "</td><td class=\"l\">" + (n.source || "–") + "</td><td>" + energyNum(n.joules_total / 3600, 2) + "</td><td>" +
      energyNum(n.joules_per_token, 2) + "</td><td>" + energyNum(n.tokens_per_joule, 3) + "</td></tr>").join("");
    return "<h3>" + energyEsc(p.pool) + "</h3><div class=\"energy-kpis\">" +
      "<span>power <b>" + energyNum(p.watts, 0) + " W</b> <span class=\"muted\">(" + sources + ")</span></span> · " +
      "<span>energy <b>" + energyNum(p.joules_total / 3600, 2) + " Wh</b></span> · " +
      "<span>J/token <b>" + energyNum(p.joules_per_token, 2) + "</b></span> · " +
      "<span>tokens/J <b>" + energyNum(p.tokens_per_joule, 3) + "</b></span> · " +
      "<span>active <b>" + p.active_nodes + "</b> / needed <b>" + p.nodes_needed + "</b> / available <b>" + p.nodes_available + "</b></span> · " +
      "<span>parked <b>" + (p.parked_nodes + p.waking_nodes) + "</b>, parkable <b>" + p.parkable_nodes + "</b></span>" +
      (p.consolidating ? " · <span class=\"muted\">consolidating</span>" : "") + "</div>" +
      "<div class=\"tablewrap\"><table><thead><tr><th class=\"l\">node</th><th class=\"l\">state</th><th>active</th><th>W</th>" +
      "<th class=\"l\">source</th><th>Wh</th><th>J/token</th><th>tokens/J</th></tr></thead><tbody>" + rows + "</tbody></table></div>";
  }).join("");
}
pollEnergy();
setInterval(pollEnergy, 2000);
