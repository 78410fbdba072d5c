// infergate configuration console: view and edit pools, nodes, routes,
// alert rules and the raw TOML through /api/v1/config, and read the audit
// log. Plain JS, no framework. Every change carries the version of the last
// read in If-Match, so a change made elsewhere in between is refused (409)
// instead of overwritten. The token lives in sessionStorage only.
"use strict";
(() => {
  const TOKEN_KEY = "infergate.admin-token";
  const API = "/api/v1/config";
  const POLICIES = ["round_robin", "weighted_round_robin", "least_outstanding", "power_of_two",
    "prefix_aware", "consistent_hash", "peak_ewma", "composite"];
  const KINDS = ["node_down", "pool_healthy_below", "imbalance", "imbalance_ratio", "latency_p99",
    "ttft_p99", "error_rate", "shedding"];
  const SEVERITIES = ["critical", "warning", "info"];
  const FAMILIES = ["openai", "tgi", "kserve", "ollama", "grpc", "other"];

  // Field specs: f = path inside the entry (dots for nested tables), t = type
  // (int, float, dur, str, select, bool, ints = comma-separated whole
  // numbers), d = the default shown as placeholder.
  const POOL_GROUPS = [
    ["Queue and ramp", [
      { f: "queue_size", l: "queue size", t: "int", d: "256" },
      { f: "queue_timeout", l: "queue timeout", t: "dur", d: "10s" },
      { f: "slow_start", l: "slow start", t: "dur", d: "0s (off)" },
      { f: "panic_threshold", l: "panic threshold %", t: "int", d: "50" }]],
    ["Active health checks", [
      { f: "health.interval", l: "interval", t: "dur", d: "5s" },
      { f: "health.timeout", l: "timeout", t: "dur", d: "1s" },
      { f: "health.unhealthy_threshold", l: "unhealthy after", t: "int", d: "3" },
      { f: "health.healthy_threshold", l: "healthy after", t: "int", d: "2" },
      { f: "health.path", l: "path", t: "str", d: "family default" },
      { f: "health.family", l: "API family", t: "select", options: FAMILIES, d: "the routes' family" },
      { f: "health.expected_status", l: "expected status", t: "ints", d: "200" },
      { f: "health.jitter", l: "jitter (0..1)", t: "float", d: "0.1" },
      { f: "health.initial_state", l: "initial state", t: "select", options: ["healthy", "unhealthy"], d: "healthy" }]],
    ["Outlier detection", [
      { f: "outlier.consecutive_failures", l: "consecutive failures", t: "int", d: "5" },
      { f: "outlier.base_ejection_time", l: "base ejection time", t: "dur", d: "30s" },
      { f: "outlier.max_ejection_percent", l: "max ejected %", t: "int", d: "50" },
      { f: "outlier.max_ejection_time", l: "max ejection time", t: "dur", d: "300s" },
      { f: "outlier.enabled", l: "enabled", t: "bool", d: "true" }]],
    ["Capacity (scraped metrics)", [
      { f: "capacity.interval", l: "scrape interval", t: "dur", d: "1s" },
      { f: "capacity.max_queue", l: "max queue", t: "int", d: "none" },
      { f: "capacity.max_kv_usage", l: "max KV usage (0..1)", t: "float", d: "none" }]],
  ];
  const ROUTE_MAIN = [
    { f: "policy", l: "policy", t: "select", options: POLICIES, d: "least_outstanding" },
    { f: "pool", l: "pool", t: "select", options: [] },
    { f: "match.model", l: "match model", t: "str", d: "any" },
    { f: "retries", l: "retries", t: "int", d: "1" },
    { f: "priority", l: "queue priority", t: "select", options: ["critical", "standard", "sheddable"], d: "standard" },
    { f: "trust_priority_header_from", l: "trust priority header from", t: "strs", d: "nobody (e.g. 10.0.0.0/8, ::1)" },
    { f: "timeouts.connect", l: "connect timeout", t: "dur", d: "2s" },
    { f: "timeouts.first_byte", l: "first byte timeout", t: "dur", d: "60s" },
    { f: "timeouts.idle", l: "idle timeout", t: "dur", d: "30s" },
    { f: "timeouts.total", l: "total timeout", t: "dur", d: "600s" },
    { f: "match.family", l: "match family", t: "select", options: FAMILIES, d: "any" },
    { f: "match.path_prefix", l: "match path prefix", t: "str", d: "any" },
    { f: "match.method", l: "match method", t: "str", d: "any" },
    { f: "max_body_bytes", l: "max body bytes", t: "int", d: "listener's" },
    { f: "retry_budget.percent", l: "retry budget %", t: "int", d: "20" },
    { f: "retry_budget.min_per_second", l: "retry budget floor /s", t: "int", d: "10" },
    { f: "retry_budget.window", l: "retry budget window", t: "dur", d: "10s" },
  ];
  const ROUTE_BALANCE = [
    { f: "balance.balance_abs_threshold", l: "abs threshold (prefix_aware)", t: "float", d: "16" },
    { f: "balance.balance_rel_threshold", l: "rel threshold (prefix_aware)", t: "float", d: "1.5" },
    { f: "balance.tokens_per_request", l: "tokens per request", t: "float", d: "4096" },
    { f: "balance.prefix_capacity", l: "prefix capacity (blocks)", t: "int", d: "262144" },
    { f: "balance.hash_key", l: "hash key (consistent_hash)", t: "str", d: "user" },
    { f: "balance.load_factor", l: "load factor (consistent_hash)", t: "float", d: "1.25" },
    { f: "balance.virtual_nodes", l: "virtual nodes (consistent_hash)", t: "int", d: "100" },
    { f: "balance.scorers.prefix", l: "scorer prefix (composite)", t: "float", d: "3" },
    { f: "balance.scorers.queue", l: "scorer queue (composite)", t: "float", d: "2" },
    { f: "balance.scorers.kv", l: "scorer kv (composite)", t: "float", d: "1" },
    { f: "balance.scorers.outstanding", l: "scorer outstanding (composite)", t: "float", d: "1" },
    { f: "balance.scorers.latency", l: "scorer latency (composite)", t: "float", d: "1" },
  ];

  let cfg = null; // last GET /api/v1/config
  let builtinRules = null; // rules in force when the file has none (from /api/v1/alerts)
  const live = new Map(); // "pool\n node" -> node from /api/v1/nodes
  let view = "dashboard";

  const $ = (id) => document.getElementById(id);
  const qa = (sel, root) => [...root.querySelectorAll(sel)];
  const he = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const seg = (s) => encodeURIComponent(s);
  const key = (pool, node) => pool + "\n" + node;
  const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  function setPath(obj, path, value) {
    const parts = path.split(".");
    let o = obj;
    for (const p of parts.slice(0, -1)) o = o[p] ??= {};
    o[parts[parts.length - 1]] = value;
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const secs = (s) => (Number.isInteger(s) ? s + "s" : Math.round(s * 1000) + "ms");

  // ---- views -------------------------------------------------------------

  function showView() {
    const want = (location.hash || "#dashboard").slice(1);
    view = ["console", "audit"].includes(want) ? want : "dashboard";
    for (const v of ["dashboard", "console", "audit"]) $(v + "-view").hidden = v !== view;
    for (const a of document.querySelectorAll("nav.tabs a")) a.classList.toggle("active", a.dataset.view === view);
    document.title = "infergate · " + view;
    if (view === "console") { loadConfig(); pollLive(); }
    else if (view === "audit") loadAudit();
    else window.dispatchEvent(new Event("resize")); // redraw the charts at their visible size
  }

  // ---- API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || (typeof body === "string" && body.trim()) || "HTTP " + status);
      this.status = status; this.type = e.type; this.errors = e.errors || []; this.current = e.current_version;
    }
  }

  // Reads send the token too: off loopback the listener wants it for reads.
  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store", headers: token() ? { "Authorization": "Bearer " + token() } : {} });
    const text = await r.text();
    let body; try { body = JSON.parse(text); } catch (_) { body = text; }
    if (!r.ok) throw new ApiError(r.status, body);
    return body;
  }

  // A change: bearer token, If-Match with the version last read, actor name.
  async function change(method, path, body, { dryRun = false, toml = false } = {}) {
    if (!token()) throw new ApiError(401, "enter the admin token first");
    if (!cfg) throw new ApiError(0, "the config is not loaded yet");
    const headers = {
      "Authorization": "Bearer " + token(),
      "If-Match": '"' + cfg.version + '"',
      "x-infergate-actor": "console",
    };
    if (body !== undefined) headers["Content-Type"] = toml ? "text/plain; charset=utf-8" : "application/json";
    const r = await fetch(API + path + (dryRun ? "?dry_run=true" : ""), {
      method, headers, body: body === undefined ? undefined : toml ? body : JSON.stringify(body),
    });
    const text = await r.text();
    let data; try { data = JSON.parse(text); } catch (_) { data = text; }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  async function loadConfig() {
    try {
      const [c, alerts] = await Promise.all([getJson(API), getJson("/api/v1/alerts").catch(() => null)]);
      cfg = c;
      builtinRules = alerts ? alerts.rules : null;
      renderMeta();
      renderBody();
      $("con-toml").value = cfg.text;
      $("con-diff").hidden = true;
      $("con-stale").hidden = true;
    } catch (e) {
      $("con-body").innerHTML = `<section class="panel"><div class="cf-msg error">Cannot read the config: ${he(e.message)}</div></section>`;
    }
  }

  async function pollLive() {
    try {
      const snap = await getJson("/api/v1/nodes");
      live.clear();
      for (const p of snap.pools) for (const n of p.nodes) live.set(key(p.name, n.name), n);
      updateLive();
    } catch (_) { /* the header dot shows a lost connection */ }
  }

  // Someone else (the file, another console, `infergate ctl`) changed it?
  async function pollVersion() {
    if (view !== "console" || !cfg) return;
    try {
      const st = await getJson("/api/v1/config/status");
      const v = st.config_version;
      $("con-stale").hidden = !v || v === cfg.version;
      $("con-stale-version").textContent = v || "";
    } catch (_) { /* ignore */ }
  }

  // ---- messages and inline errors ----------------------------------------

  function notice(text, kind) {
    const n = $("con-notice");
    n.className = "notice " + (kind || "ok");
    n.textContent = text;
    n.hidden = false;
  }

  const msgOf = (scope) => scope._msg || scope.querySelector(".cf-msg");

  function clearErrors(scope) {
    const m = msgOf(scope);
    if (m) { m.textContent = ""; m.classList.remove("error", "info"); }
    for (const el of qa(".ferr", scope)) el.textContent = "";
    for (const el of qa(".bad", scope)) el.classList.remove("bad");
  }

  function fieldError(el, message) {
    el.classList.add("bad");
    const slot = el.parentElement.querySelector(".ferr");
    if (slot) slot.textContent = slot.textContent ? slot.textContent + "; " + message : message;
  }

  // The input an API error path (`pools[0].nodes[1].weight`) belongs to:
  // the longest field path it ends with, else the same last segment.
  function fieldFor(scope, path) {
    const dotted = String(path).replace(/\[[^\]]*\]/g, "");
    const fields = qa("[data-f]", scope);
    let best = null;
    for (const el of fields) {
      const f = el.dataset.f;
      if ((dotted === f || dotted.endsWith("." + f)) && (!best || f.length > best.dataset.f.length)) best = el;
    }
    if (best) return best;
    const last = dotted.split(".").pop();
    return fields.find((el) => el.dataset.f.split(".").pop() === last) || null;
  }

  function openTo(el) {
    for (let d = el.closest("details"); d; d = d.parentElement && d.parentElement.closest("details")) d.open = true;
  }

  function showError(scope, e) {
    clearErrors(scope);
    const m = msgOf(scope);
    const say = (text) => { if (m) { m.textContent = text; m.classList.add("error"); } else notice(text, "error"); };
    if (e.status === 401 || e.status === 403) {
      const text = e.status === 403
        ? "This gateway has no admin token configured, so it refuses changes: set admin.token or INFERGATE_ADMIN_TOKEN and restart it."
        : token() ? "The token was refused: enter the right admin token above." : "Enter the admin token above to make changes.";
      say(text); notice(text, "error");
      $("con-token").classList.add("bad"); $("con-token").focus();
      return;
    }
    if (e.status === 409) {
      notice("The config changed since you loaded it — reloaded (now version " + (e.current || "?") + "). Check the values and redo the change.", "warn");
      loadConfig();
      return;
    }
    say(e.message);
    let mapped = 0;
    for (const fe of e.errors) {
      const el = fieldFor(scope, fe.path);
      if (el) { fieldError(el, fe.message); mapped++; openTo(el); }
    }
    // A value the TOML parser rejected: its message quotes the line `key = value`.
    const line = !mapped && /^\s*\d+\s*\|\s*([A-Za-z0-9_-]+)\s*=/m.exec(e.message);
    if (line) {
      const el = fieldFor(scope, line[1]);
      if (el) { fieldError(el, "not accepted (see above)"); openTo(el); }
    }
    if (e.status === 404) loadConfig();
  }

  // ---- reading forms -----------------------------------------------------

  const DUR = /^\d+(\.\d+)?(ms|s|m|h)$/;
  // Parse one input; undefined (with an inline error) when malformed.
  function parseValue(el) {
    const v = el.value.trim(), t = el.dataset.t;
    if (t === "int") {
      if (/^-?\d+$/.test(v)) return Number(v);
      fieldError(el, "a whole number");
    } else if (t === "float") {
      if (v !== "" && Number.isFinite(Number(v))) return Number(v);
      fieldError(el, "a number");
    } else if (t === "dur") {
      if (DUR.test(v)) return v;
      fieldError(el, "a duration like 500ms, 10s, 5m");
    } else if (t === "bool") {
      if (v === "true" || v === "false") return v === "true";
      fieldError(el, "true or false");
    } else if (t === "ints") {
      const parts = v.split(",").map((x) => x.trim()).filter((x) => x !== "");
      if (parts.length && parts.every((x) => /^\d+$/.test(x))) return parts.map(Number);
      fieldError(el, "whole numbers separated by commas, e.g. 200, 204");
    } else if (t === "strs") {
      const parts = v.split(",").map((x) => x.trim()).filter((x) => x !== "");
      if (parts.length) return parts;
      fieldError(el, "values separated by commas");
    } else return v;
    return undefined;
  }

  function badInput(scope) {
    const m = msgOf(scope);
    if (m) { m.textContent = "Fix the marked fields first (nothing was sent)."; m.classList.add("error"); }
  }

  // A merge patch of the fields that differ from what was loaded; an
  // emptied field becomes null (removed: the default applies).
  function collectPatch(scope) {
    clearErrors(scope);
    const patch = {}; let ok = true;
    for (const el of qa("[data-f]", scope)) {
      if (el.dataset.create) continue;
      const now = el.value.trim();
      if (now === (el.dataset.o ?? "")) continue;
      const value = now === "" ? null : parseValue(el);
      if (value === undefined) { ok = false; continue; }
      setPath(patch, el.dataset.f, value);
    }
    if (!ok) badInput(scope);
    return ok ? patch : null;
  }

  // A new entry from the non-empty fields.
  function collectEntry(scope, required) {
    clearErrors(scope);
    const entry = {}; let ok = true;
    for (const el of qa("[data-f]", scope)) {
      if (el.value.trim() === "") {
        if (required.includes(el.dataset.f)) { fieldError(el, "required"); ok = false; }
        continue;
      }
      const value = parseValue(el);
      if (value === undefined) { ok = false; continue; }
      setPath(entry, el.dataset.f, value);
    }
    if (!ok) badInput(scope);
    return ok ? entry : null;
  }

  // ---- rendering ---------------------------------------------------------

  function input(spec, value, extra = "") {
    const v = value == null ? "" : Array.isArray(value) ? value.join(", ") : String(value);
    const cls = spec.t === "int" || spec.t === "float" ? "num" : "";
    if (spec.t === "bool") {
      return input({ ...spec, t: "select", options: ["true", "false"] }, value, extra).replace('data-t="str"', 'data-t="bool"');
    }
    if (spec.t === "select") {
      const opts = (v && !spec.options.includes(v) ? [v, ...spec.options] : spec.options)
        .map((o) => `<option value="${he(o)}"${o === v ? " selected" : ""}>${he(o)}</option>`).join("");
      const none = spec.d ? `<option value=""${v === "" ? " selected" : ""}>default (${he(spec.d)})</option>` : "";
      return `<select data-f="${he(spec.f)}" data-t="str" data-o="${he(v)}" ${extra}>${none}${opts}</select>`;
    }
    return `<input class="${cls}" data-f="${he(spec.f)}" data-t="${spec.t}" data-o="${he(v)}" value="${he(v)}"` +
      ` placeholder="${he(spec.d ?? "")}" autocomplete="off" spellcheck="false" ${extra}>`;
  }

  const field = (spec, value, extra) =>
    `<label class="fld"><span>${he(spec.l)}</span>${input(spec, value, extra)}<small class="ferr"></small></label>`;

  function renderMeta() {
    $("con-version").textContent = cfg.version;
    $("con-generation").textContent = cfg.generation;
    $("con-path").textContent = cfg.path ? cfg.path + (cfg.persisted ? " (changes are saved to it)" : "") : "none (changes are not saved)";
    $("con-last-error").hidden = !cfg.last_error;
    $("con-last-error").textContent = cfg.last_error ? "Last reload of the file was refused: " + cfg.last_error : "";
    tokenState();
  }

  function tokenState() {
    $("con-token-state").textContent = token() ? "token set for this tab" : "no token: changes need one";
  }

  function renderBody() {
    const c = cfg.config || {};
    const pools = c.pools || [];
    const html = [];
    pools.forEach((p) => html.push(poolPanel(p)));
    html.push(addPoolPanel());
    html.push(routesPanel(c.routes || [], pools.map((p) => p.name)));
    html.push(rulesPanel(c));
    // Keep open sections open across the re-render after a change.
    const open = new Set(qa("details[data-k]", $("con-body")).filter((d) => d.open).map((d) => d.dataset.k));
    $("con-body").innerHTML = html.join("");
    for (const d of qa("details[data-k]", $("con-body"))) d.open = open.has(d.dataset.k);
    // Rows report in the message line above their table.
    for (const tr of qa("tr.cf", $("con-body"))) tr._msg = tr.closest(".cf-host").querySelector(".cf-msg.rows");
    updateLive();
  }

  function poolPanel(p) {
    const nodes = (p.nodes || []).map((n) => {
      const draining = n.draining === true;
      return `<tr class="cf" data-pool="${he(p.name)}" data-node="${he(n.name)}">
        <td class="l"><b>${he(n.name)}</b></td>
        <td class="l muted mono">${he(n.addr)}</td>
        <td>${input({ f: "weight", t: "int", d: "1" }, n.weight, 'data-primary="1" aria-label="weight"')}<small class="ferr"></small></td>
        <td>${input({ f: "max_concurrent", t: "int", d: "none" }, n.max_concurrent, 'aria-label="max concurrent"')}<small class="ferr"></small></td>
        <td class="l live-state" data-live="${he(key(p.name, n.name))}"><span class="state">…</span></td>
        <td class="l live-share" data-live="${he(key(p.name, n.name))}">–</td>
        <td class="l actions">
          <button type="button" data-act="node-save" class="primary">Save</button>
          <button type="button" data-act="node-drain"${draining ? " disabled" : ""}>Drain</button>
          <button type="button" data-act="node-enable"${draining ? "" : " disabled"}>Enable</button>
          <button type="button" data-act="node-delete" class="danger">Delete</button></td></tr>`;
    }).join("");
    const groups = POOL_GROUPS.map(([title, specs]) =>
      `<fieldset><legend>${he(title)}</legend>${specs.map((s) => field(s, getPath(p, s.f))).join("")}</fieldset>`).join("");
    // A pool fed by discovery has no nodes in the file: its nodes are the
    // source's (listed live on the dashboard) and the API refuses edits.
    const d = p.discovery;
    const source = d && (d.kubernetes ? `Kubernetes Service ${d.kubernetes.namespace || "(own namespace)"}/${d.kubernetes.service}`
      : d.dns ? `DNS ${[...(d.dns.names || []), ...(d.dns.srv || [])].join(", ")}` : "discovery");
    const discovered = d ? `<tr><td class="l muted" colspan="7">nodes come from ${he(source)}; they are shown on the dashboard
      and are not edited here (scale or annotate them at the source; set defaults under [pools.discovery])</td></tr>` : "";
    const addNode = d ? "" : `<div class="cf add-node" data-pool="${he(p.name)}">
        <div class="cf-msg"></div>
        <div class="row">
          <b class="muted">Add node</b>
          ${field({ f: "name", l: "name", t: "str", d: "e.g. node-5" }, null, 'data-create="1"')}
          ${field({ f: "addr", l: "addr", t: "str", d: "host:port" }, null, 'data-create="1"')}
          ${field({ f: "weight", l: "weight", t: "int", d: "1" }, null, 'data-create="1"')}
          ${field({ f: "max_concurrent", l: "max concurrent", t: "int", d: "none" }, null, 'data-create="1"')}
          <button type="button" data-act="node-add" data-primary="1">Add node</button>
        </div>
      </div>`;
    return `<section class="panel con-pool cf-host" data-pool="${he(p.name)}">
      <h2>Pool <span class="pname">${he(p.name)}</span> <span class="count">${(p.nodes || []).length} nodes</span>
        <span class="grow"></span><button type="button" data-act="pool-delete" class="danger">Delete pool</button></h2>
      <div class="cf-msg rows"></div>
      <div class="tablewrap"><table class="con-nodes">
        <thead><tr><th class="l">node</th><th class="l">addr</th><th>weight</th><th>max concurrent</th>
          <th class="l">state</th><th class="l">share / expected</th><th class="l">actions</th></tr></thead>
        <tbody>${nodes || discovered || '<tr><td class="l muted" colspan="7">no nodes</td></tr>'}</tbody></table></div>
      ${addNode}
      <details class="pool-settings" data-k="${he("pool\n" + p.name)}"><summary>Pool settings: queue, health checks, outlier detection, capacity</summary>
        <div class="cf pool-form" data-pool="${he(p.name)}">
          <div class="cf-msg"></div>
          <div class="groups">${groups}</div>
          <div class="actions"><button type="button" data-act="pool-save" class="primary" data-primary="1">Save pool settings</button>
            <span class="muted">only changed fields are sent; an emptied field goes back to its default</span></div>
        </div>
      </details>
    </section>`;
  }

  function addPoolPanel() {
    return `<section class="panel cf add-pool">
      <h2>Add pool</h2>
      <div class="cf-msg"></div>
      <div class="row">
        ${field({ f: "name", l: "pool name", t: "str", d: "e.g. embed" }, null, 'data-create="1"')}
        ${field({ f: "nodes.name", l: "first node name", t: "str", d: "e.g. node-0" }, null, 'data-create="1"')}
        ${field({ f: "nodes.addr", l: "first node addr", t: "str", d: "host:port" }, null, 'data-create="1"')}
        ${field({ f: "nodes.weight", l: "weight", t: "int", d: "1" }, null, 'data-create="1"')}
        <button type="button" data-act="pool-add" data-primary="1">Add pool</button>
      </div></section>`;
  }

  function routesPanel(routes, poolNames) {
    const poolSpec = (extra) => ({ f: "pool", l: "pool", t: "select", options: poolNames, ...extra });
    const cards = routes.map((r) => {
      const main = ROUTE_MAIN.map((s) => field(s.f === "pool" ? poolSpec() : s, getPath(r, s.f))).join("");
      const bal = ROUTE_BALANCE.map((s) => field(s, getPath(r, s.f))).join("");
      return `<div class="cf route" data-route="${he(r.name)}">
        <div class="route-head"><b>${he(r.name)}</b>
          <span class="muted">${he(describeMatch(r.match))}</span><span class="grow"></span>
          <button type="button" data-act="route-save" class="primary" data-primary="1">Save route</button>
          <button type="button" data-act="route-delete" class="danger">Delete</button></div>
        <div class="cf-msg"></div>
        <div class="row">${main}</div>
        <details data-k="${he("route\n" + r.name)}"><summary>Balance options (AI-aware policies)</summary><div class="row">${bal}</div></details>
      </div>`;
    }).join("");
    const add = `<div class="cf add-route">
      <div class="cf-msg"></div>
      <div class="row"><b class="muted">Add route</b>
        ${field({ f: "name", l: "name", t: "str", d: "e.g. embeddings" }, null, 'data-create="1"')}
        ${field(poolSpec({ d: "" }), poolNames[0], 'data-create="1"')}
        ${field({ f: "policy", l: "policy", t: "select", options: POLICIES, d: "least_outstanding" }, "", 'data-create="1"')}
        ${field({ f: "match.model", l: "match model", t: "str", d: "any (glob ok)" }, null, 'data-create="1"')}
        <button type="button" data-act="route-add" data-primary="1">Add route</button></div></div>`;
    return `<section class="panel con-routes"><h2>Routes <span class="count">${routes.length}</span>
      <span class="muted small">first match wins, in file order</span></h2>${cards || '<p class="muted">No routes.</p>'}${add}</section>`;
  }

  function describeMatch(m) {
    if (!m) return "matches every request";
    const parts = Object.entries(m).filter(([k]) => k !== "headers").map(([k, v]) => `${k}=${v}`);
    if (m.headers) parts.push(...Object.entries(m.headers).map(([k, v]) => `header ${k}=${v}`));
    return parts.length ? "matches " + parts.join(", ") : "matches every request";
  }

  function rulesPanel(c) {
    const inFile = c.alerts && Array.isArray(c.alerts.rules);
    const rules = inFile ? c.alerts.rules : (builtinRules || []).map(ruleFromLive);
    const rows = rules.map((r) => `<tr class="cf" data-rule="${he(r.name)}">
      <td class="l"><b>${he(r.name)}</b></td><td class="l">${he(r.kind)}</td><td class="l">${he(r.pool ?? "all")}</td>
      <td>${input({ f: "threshold", t: "float", d: "0" }, r.threshold, 'data-primary="1" aria-label="threshold"')}<small class="ferr"></small></td>
      <td>${input({ f: "for", t: "dur", d: "30s" }, r.for, 'aria-label="for"')}<small class="ferr"></small></td>
      <td>${input({ f: "severity", t: "select", options: SEVERITIES, d: "warning" }, r.severity, 'aria-label="severity"')}<small class="ferr"></small></td>
      <td class="l actions"><button type="button" data-act="rule-save" class="primary">Save</button>
        <button type="button" data-act="rule-delete" class="danger">Delete</button></td></tr>`).join("");
    const kinds = { f: "kind", l: "kind", t: "select", options: KINDS };
    const pools = { f: "pool", l: "pool", t: "select", options: ((c.pools || []).map((p) => p.name)), d: "all pools" };
    return `<section class="panel con-rules cf-host"><h2>Alert rules <span class="count">${rules.length}</span>
      ${inFile ? "" : '<span class="muted small">built-in rules (the file has none): a change writes them all into the file</span>'}</h2>
      <div class="cf-msg rows"></div>
      <div class="tablewrap"><table class="con-rules-table"><thead><tr><th class="l">name</th><th class="l">kind</th><th class="l">pool</th>
        <th>threshold</th><th>for</th><th>severity</th><th class="l">actions</th></tr></thead>
        <tbody>${rows || '<tr><td class="l muted" colspan="7">no rules</td></tr>'}</tbody></table></div>
      <div class="cf add-rule"><div class="cf-msg"></div><div class="row"><b class="muted">Add rule</b>
        ${field({ f: "name", l: "name", t: "str", d: "e.g. SlowTTFT" }, null, 'data-create="1"')}
        ${field(kinds, KINDS[0], 'data-create="1"')}
        ${field(pools, "", 'data-create="1"')}
        ${field({ f: "threshold", l: "threshold", t: "float", d: "0" }, null, 'data-create="1"')}
        ${field({ f: "for", l: "for", t: "dur", d: "30s" }, null, 'data-create="1"')}
        ${field({ f: "severity", l: "severity", t: "select", options: SEVERITIES }, "warning", 'data-create="1"')}
        <button type="button" data-act="rule-add" data-primary="1">Add rule</button></div></div></section>`;
  }

  // A built-in rule as /api/v1/alerts shows it, in the file's field names.
  function ruleFromLive(r) {
    const out = { name: r.name, kind: r.kind, threshold: r.threshold, for: secs(r.for_s),
      resolve_for: secs(r.resolve_for_s), repeat_interval: secs(r.repeat_interval_s), severity: r.severity };
    if (r.pool != null) out.pool = r.pool;
    if (r.resolve_threshold !== r.threshold) out.resolve_threshold = r.resolve_threshold;
    return out;
  }

  function updateLive() {
    for (const td of qa("td[data-live]", $("con-body"))) {
      const n = live.get(td.dataset.live);
      if (td.classList.contains("live-state")) {
        td.innerHTML = n ? `<span class="state ${he(n.state)}">${he(n.state)}</span>` : '<span class="muted">not running</span>';
      } else {
        td.textContent = n ? (n.share * 100).toFixed(1) + "% / " + (n.expected_share * 100).toFixed(1) + "%" : "–";
      }
    }
  }

  // ---- actions -----------------------------------------------------------

  async function run(scope, button, what, fn) {
    if (button) button.disabled = true;
    $("con-notice").hidden = true;
    clearErrors(scope);
    try {
      const res = await fn();
      if (!res) return; // nothing to send
      const diffLines = (res.diff || "").split("\n").filter((l) => /^[+-][^+-]/.test(l)).length;
      if (res.dry_run) return res;
      const restart = (res.restart_required || []).length ? `; takes effect after a restart: ${res.restart_required.join(", ")}` : "";
      notice(res.changed ? `${what}: applied, now version ${res.version}${res.persisted ? ", saved to the file" : ""} (${diffLines} changed lines)${restart}`
        : `${what}: nothing changed`, res.changed ? (restart ? "warn" : "ok") : "info");
      await loadConfig();
      pollLive();
      return res;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      showError(scope, e);
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  }

  const ACTIONS = {
    "node-save": (s) => {
      const patch = collectPatch(s);
      if (!patch) return;
      if (!Object.keys(patch).length) return say(s, "nothing changed");
      const base = `/pools/${seg(s.dataset.pool)}/nodes/${seg(s.dataset.node)}`;
      const only = Object.keys(patch);
      // The weight alone has its own call (and audit line).
      if (only.length === 1 && only[0] === "weight" && patch.weight !== null) return change("PUT", base + "/weight", { weight: patch.weight });
      return change("PATCH", base, patch);
    },
    "node-drain": (s) => change("POST", `/pools/${seg(s.dataset.pool)}/nodes/${seg(s.dataset.node)}/drain`),
    "node-enable": (s) => change("POST", `/pools/${seg(s.dataset.pool)}/nodes/${seg(s.dataset.node)}/enable`),
    "node-delete": (s) => confirm(`Delete node ${s.dataset.node} from pool ${s.dataset.pool}?`)
      && change("DELETE", `/pools/${seg(s.dataset.pool)}/nodes/${seg(s.dataset.node)}`),
    "node-add": (s) => {
      const entry = collectEntry(s, ["name", "addr"]);
      return entry && change("POST", `/pools/${seg(s.dataset.pool)}/nodes`, entry);
    },
    "pool-save": (s) => {
      const patch = collectPatch(s);
      if (!patch) return;
      if (!Object.keys(patch).length) return say(s, "nothing changed");
      return change("PATCH", `/pools/${seg(s.dataset.pool)}`, patch);
    },
    "pool-delete": (s) => confirm(`Delete pool ${s.dataset.pool} and all its nodes? Routes to it must go first.`)
      && change("DELETE", `/pools/${seg(s.dataset.pool)}`),
    "pool-add": (s) => {
      const entry = collectEntry(s, ["name", "nodes.name", "nodes.addr"]);
      if (!entry) return;
      entry.nodes = [entry.nodes];
      return change("POST", "/pools", entry);
    },
    "route-save": (s) => {
      const patch = collectPatch(s);
      if (!patch) return;
      if (!Object.keys(patch).length) return say(s, "nothing changed");
      return change("PATCH", `/routes/${seg(s.dataset.route)}`, patch);
    },
    "route-delete": (s) => confirm(`Delete route ${s.dataset.route}?`) && change("DELETE", `/routes/${seg(s.dataset.route)}`),
    "route-add": (s) => {
      const entry = collectEntry(s, ["name", "pool"]);
      return entry && change("POST", "/routes", entry);
    },
    "rule-save": (s) => {
      const patch = collectPatch(s);
      if (!patch) return;
      if (!Object.keys(patch).length) return say(s, "nothing changed");
      const edit = (r) => { for (const [k, v] of Object.entries(patch)) { if (v === null) delete r[k]; else r[k] = v; } return r; };
      return builtinEdit(s.dataset.rule, edit)
        || change("PATCH", `/alerts/rules/${seg(s.dataset.rule)}`, patch);
    },
    "rule-delete": (s) => confirm(`Delete alert rule ${s.dataset.rule}?`)
      && (builtinEdit(s.dataset.rule, () => null) || change("DELETE", `/alerts/rules/${seg(s.dataset.rule)}`)),
    "rule-add": (s) => {
      const entry = collectEntry(s, ["name", "kind"]);
      return entry && change("POST", "/alerts/rules", entry);
    },
    "toml-preview": async (s) => {
      const res = await change("PUT", "", $("con-toml").value, { dryRun: true, toml: true });
      showDiff(res.diff, "valid; no difference from the running config");
      return res;
    },
    "toml-apply": async (s) => {
      const res = await change("PUT", "", $("con-toml").value, { toml: true });
      return res;
    },
    "toml-reset": () => { $("con-toml").value = cfg ? cfg.text : ""; $("con-diff").hidden = true; clearErrors($("con-raw")); },
  };

  function say(scope, text) { clearErrors(scope); const m = msgOf(scope); if (m) { m.textContent = text; m.classList.add("info"); } }

  // With the built-in rules in force, write the whole (edited) list into
  // the file as one whole-document merge patch; null: not applicable.
  function builtinEdit(name, edit) {
    const c = cfg.config || {};
    if (c.alerts && Array.isArray(c.alerts.rules)) return null;
    const rules = (builtinRules || []).map(ruleFromLive).map((r) => (r.name === name ? edit(r) : r)).filter(Boolean);
    return change("PATCH", "", { alerts: { rules } });
  }

  function showDiff(diff, empty) {
    const pre = $("con-diff");
    pre.hidden = false;
    pre.innerHTML = diff ? renderDiff(diff) : `<span class="muted">${he(empty)}</span>`;
  }

  function renderDiff(diff) {
    return String(diff).split("\n").map((l) => {
      const cls = l.startsWith("+++") || l.startsWith("---") ? "dh" : l.startsWith("+") ? "da" : l.startsWith("-") ? "dd" : l.startsWith("@@") ? "dh" : "";
      return cls ? `<span class="${cls}">${he(l)}</span>` : he(l);
    }).join("\n");
  }

  const TITLES = { "node-save": "node", "node-drain": "drain", "node-enable": "enable", "node-delete": "delete node",
    "node-add": "add node", "pool-save": "pool settings", "pool-delete": "delete pool", "pool-add": "add pool",
    "route-save": "route", "route-delete": "delete route", "route-add": "add route", "rule-save": "alert rule",
    "rule-delete": "delete rule", "rule-add": "add rule", "toml-preview": "preview", "toml-apply": "TOML" };

  function onAction(ev) {
    const button = ev.target.closest("button[data-act]");
    if (!button) return;
    const act = button.dataset.act;
    const scope = button.closest(".cf, .cf-host");
    if (act === "toml-reset") return ACTIONS[act](scope);
    const what = TITLES[act] + (scope.dataset.node ? " " + scope.dataset.pool + "/" + scope.dataset.node
      : scope.dataset.route ? " " + scope.dataset.route : scope.dataset.rule ? " " + scope.dataset.rule
        : scope.dataset.pool ? " " + scope.dataset.pool : "");
    run(scope, button, what, () => ACTIONS[act](scope));
  }

  // Enter in a field presses its form's main button.
  function onKey(ev) {
    if (ev.key !== "Enter" || ev.target.tagName !== "INPUT" || !ev.target.dataset.f) return;
    const scope = ev.target.closest(".cf");
    const main = scope && scope.querySelector("button[data-act].primary, button[data-act][data-primary]");
    if (main) { ev.preventDefault(); main.click(); }
  }

  // ---- audit -------------------------------------------------------------

  const OUTCOME = { applied: "ok", unchanged: "idle", refused: "bad", conflict: "warn", failed: "bad" };

  async function loadAudit() {
    loadHistory();
    try {
      const { entries } = await getJson(API + "/audit?limit=200");
      $("audit-count").textContent = entries.length;
      $("audit-msg").textContent = ""; $("audit-msg").className = "cf-msg";
      $("audit-rows").innerHTML = entries.map((e) => `<tr class="audit-entry" data-id="${e.id}">
          <td class="l">${he(new Date(e.at_unix_ms).toLocaleString())}</td>
          <td class="l">${he(e.actor)}</td>
          <td class="l action">${he(e.action)}</td>
          <td class="l"><span class="badge ${OUTCOME[e.outcome] || "idle"}">${he(e.outcome)}</span></td>
          <td class="l detail" title="${he(e.detail || "")}">${he(e.detail || "")}${(e.secrets_changed || []).length
            ? `<span class="muted">${e.detail ? "; " : ""}secret changed (value not shown): ${he(e.secrets_changed.join(", "))}</span>` : ""}</td>
          <td class="l mono muted">${he(e.version_before.slice(0, 8))}${e.version_after ? " → " + he(e.version_after.slice(0, 8)) : ""}</td>
          <td class="l">${e.diff ? '<button type="button" class="ghost" data-diff="1">show diff</button>' : '<span class="muted">–</span>'}</td></tr>
        ${e.diff ? `<tr class="diffrow" hidden><td class="l" colspan="7"><pre class="diff">${renderDiff(e.diff)}</pre></td></tr>` : ""}`).join("")
        || '<tr><td class="l muted" colspan="7">No changes yet.</td></tr>';
    } catch (e) {
      $("audit-msg").textContent = "Cannot read the audit log: " + e.message;
      $("audit-msg").className = "cf-msg error";
    }
  }

  async function loadHistory() {
    try {
      const h = await getJson(API + "/history");
      $("history-count").textContent = h.versions.length;
      $("history-rows").innerHTML = h.versions.map((v) => `<tr class="history-entry" data-version="${he(v.version)}">
          <td class="l mono">${he(v.version)}</td>
          <td class="l">${he(new Date(v.at_unix_ms).toLocaleString())}</td>
          <td class="l">${he(v.actor)}</td>
          <td class="l">${he(v.action)}</td>
          <td class="l">${v.version === h.current ? '<span class="badge ok">in force</span>'
            : `<button type="button" class="ghost" data-rollback="${he(v.version)}">Roll back</button>`}</td></tr>`).join("");
    } catch (e) {
      $("history-msg").textContent = "Cannot read the config history: " + e.message;
      $("history-msg").className = "cf-msg error";
    }
  }

  // Preview the rollback's diff (a dry run), ask, then apply it based on
  // the version just read, like every other change.
  async function rollbackTo(version) {
    const msg = $("history-msg");
    try {
      cfg = await getJson(API);
      const preview = await change("POST", "/rollback", { version }, { dryRun: true });
      if (!preview.changed) { msg.textContent = "That is the config in force already."; msg.className = "cf-msg"; return; }
      if (!confirm(`Roll back to ${version}?\n\n${preview.diff.slice(0, 2000)}`)) return;
      const done = await change("POST", "/rollback", { version });
      msg.textContent = `Rolled back: version ${done.version} is in force` + (done.persisted ? " and saved to the file." : ".");
      msg.className = "cf-msg ok";
      cfg = null;
      loadAudit();
    } catch (e) {
      msg.textContent = "Rollback refused: " + e.message;
      msg.className = "cf-msg error";
    }
  }

  function onAuditClick(ev) {
    const r = ev.target.closest("button[data-rollback]");
    if (r) return rollbackTo(r.dataset.rollback);
    const b = ev.target.closest("button[data-diff]");
    if (!b) return;
    const row = b.closest("tr").nextElementSibling;
    row.hidden = !row.hidden;
    b.textContent = row.hidden ? "show diff" : "hide diff";
  }

  // ---- wiring ------------------------------------------------------------

  // The token goes to sessionStorage (this tab) and, for the dashboard's
  // event stream (which cannot send headers) on a listener whose reads need
  // it, to the session cookie the listener accepts for reads only.
  const COOKIE = "infergate_token";
  function setCookie(t) {
    document.cookie = t && /^[\x21-\x7e]+$/.test(t) && !/[;,"\\]/.test(t)
      ? `${COOKIE}=${t}; Path=/; SameSite=Strict` : `${COOKIE}=; Path=/; SameSite=Strict; Max-Age=0`;
  }
  function saveToken() {
    const t = $("con-token").value.trim();
    if (t) { sessionStorage.setItem(TOKEN_KEY, t); setCookie(t); }
    $("con-token").value = "";
    $("con-token").classList.remove("bad");
    tokenState();
    window.dispatchEvent(new Event("infergate:token"));
    if (view === "console") { loadConfig(); pollLive(); }
  }

  $("con-token-save").addEventListener("click", saveToken);
  $("con-token").addEventListener("keydown", (ev) => { if (ev.key === "Enter") saveToken(); });
  $("con-token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); setCookie(""); tokenState(); });
  $("con-reload").addEventListener("click", () => { $("con-notice").hidden = true; loadConfig(); pollLive(); });
  $("con-stale-reload").addEventListener("click", () => loadConfig());
  $("console-view").addEventListener("click", onAction);
  $("console-view").addEventListener("keydown", onKey);
  $("audit-view").addEventListener("click", onAuditClick);
  $("audit-refresh").addEventListener("click", loadAudit);
  if (token()) setCookie(token());
  window.addEventListener("hashchange", showView);
  setInterval(() => { if (view === "console") { pollLive(); pollVersion(); } }, 2000);
  showView();
})();
