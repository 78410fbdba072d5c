// Drives headless Chromium (Debian's /usr/bin/chromium) with playwright-core
// through the configuration console of a running `infergate demo`:
//   1. the console shows the config; the token goes into the token field;
//   2. sim-0's weight is set to 5 through its form (the others keep theirs);
//   3. the config file now says weight = 5 for sim-0;
//   4. on the Dashboard, sim-0's expected share becomes 5/sum(weights) and its
//      observed share (the dashboard's recent window) rises to match;
//   5. a node is drained with its button and shows as draining;
//   6. the audit view lists the changes by the console, with their diffs;
//   9. rolling back to the first config of the history restores the file;
//   7. a change based on an old version gets the conflict notice and a re-read;
//   8. an invalid weight (0) shows the API's message next to the field;
//   9. a screenshot of the console goes to OUT.png.
// Usage: CONSOLE_TOKEN=... node bench/console-check.mjs URL CONFIG.toml OUT.png
import { readFileSync } from "node:fs";
import { openPage } from "./browser.mjs";

const [url, configPath, out] = process.argv.slice(2);
const token = process.env.CONSOLE_TOKEN;
if (!url || !configPath || !out || !token) {
  console.error("usage: CONSOLE_TOKEN=... node bench/console-check.mjs URL CONFIG.toml OUT.png");
  process.exit(2);
}
const NEW_WEIGHT = 5;
const DRAIN = "sim-3";

const { browser, page, fail, errors } = await openPage({ width: 1440, height: 1000 });
page.on("dialog", (d) => d.accept()); // the rollback button asks confirm()
const t0 = Date.now();
const timings = [];
let mark = Date.now();
// One passed step: a short label for the timing summary, and what was seen.
const step = (label, seen = "") => {
  const now = Date.now();
  timings.push(`${label} ${now - mark} ms`);
  console.log(`  ok: ${label} (${now - mark} ms)${seen ? ": " + seen : ""}`);
  mark = now;
};
const must = (p, msg) => p.catch(() => fail(msg));

// Node weights as the file has them: {name: weight}.
function fileWeights() {
  const text = readFileSync(configPath, "utf8");
  const weights = {};
  for (const block of text.split("[[pools.nodes]]").slice(1)) {
    const name = /^\s*name\s*=\s*"([^"]+)"/m.exec(block);
    const weight = /^\s*weight\s*=\s*(\d+)/m.exec(block);
    if (name) weights[name[1]] = weight ? Number(weight[1]) : 1;
  }
  return weights;
}

// sim-N rows of the dashboard: {name: {share, expected, state}}.
const dashboardRows = () => page.evaluate(() => {
  const rows = {};
  for (const tr of document.querySelectorAll("#pools tbody tr")) {
    const name = tr.children[0].querySelector("b").textContent;
    const m = /([\d.]+)%\s*\/\s*([\d.]+)%/.exec(tr.children[3].textContent);
    rows[name] = { share: m ? Number(m[1]) / 100 : null, expected: m ? Number(m[2]) / 100 : null,
      state: tr.children[1].querySelector(".state").textContent };
  }
  return rows;
});

// Poll `probe` (short waits only) until it returns a truthy value or the deadline passes.
async function until(what, seconds, probe) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last && last.ok) return last;
    await page.waitForTimeout(250);
  }
  await fail(`${what}: not within ${seconds} s (last: ${JSON.stringify(last)})`);
}

const before = fileWeights();
if (before["sim-0"] == null) await fail("sim-0 is not in " + configPath);

// 1. Dashboard live, then the console.
await page.goto(url);
await must(page.waitForSelector("#live.on", { timeout: 10000 }), "event stream never went live");
await must(page.waitForSelector("#pools tbody tr", { timeout: 10000 }), "no node rows on the dashboard");
step("dashboard live");
await page.click('nav.tabs a[data-view="console"]');
await must(page.waitForSelector('#console-view tr.cf[data-node="sim-0"]', { timeout: 10000 }), "the console shows no row for sim-0");
const shownPath = await page.textContent("#con-path");
if (!shownPath.includes(configPath)) await fail(`console shows file "${shownPath}", not ${configPath}`);
const version0 = await page.textContent("#con-version");
await page.fill("#con-token", token);
await page.click("#con-token-save");
const stored = await page.evaluate(() => ({ session: Object.values(sessionStorage), local: Object.values(localStorage), url: location.href }));
if (!stored.session.includes(token)) await fail("the token is not in sessionStorage");
if (stored.local.includes(token) || stored.url.includes(token)) await fail("the token leaked into localStorage or the URL");
if ((await page.inputValue("#con-token")) !== "") await fail("the token field still shows the token");
step("console + token", `version ${version0}, file ${shownPath}`);

// 2. Weight through the form.
const row = (name) => `#console-view tr.cf[data-node="${name}"]`;
await page.fill(`${row("sim-0")} input[data-f="weight"]`, String(NEW_WEIGHT));
await page.click(`${row("sim-0")} button[data-act="node-save"]`);
await must(page.waitForSelector(`${row("sim-0")} input[data-f="weight"][data-o="${NEW_WEIGHT}"]`, { timeout: 10000 }),
  "the console did not show the new weight after saving");
const notice = await page.textContent("#con-notice");
if (!/applied/.test(notice)) await fail("no 'applied' notice after saving: " + notice);
const version1 = await page.textContent("#con-version");
if (version1 === version0) await fail("the version did not change after saving");
const tSaved = Date.now();
step("save weight", `version ${version0} -> ${version1}; "${notice.trim()}"`);

// 3. The file.
const after = fileWeights();
if (after["sim-0"] !== NEW_WEIGHT) await fail(`${configPath}: sim-0 weight is ${after["sim-0"]}, not ${NEW_WEIGHT}`);
for (const [n, w] of Object.entries(before)) if (n !== "sim-0" && after[n] !== w) await fail(`${configPath}: ${n} weight changed ${w} -> ${after[n]}`);
step("file", `weight = ${NEW_WEIGHT} for sim-0, others unchanged ${JSON.stringify(after)}`);

// 4. The dashboard follows: expected share at once, observed share within the
// dashboard's recent window (10 s) plus some slack.
const total = Object.values(after).reduce((a, b) => a + b, 0);
const expected = NEW_WEIGHT / total;
await page.click('nav.tabs a[data-view="dashboard"]');
const exp = await until("sim-0's expected share on the dashboard", 10, async () => {
  const r = await dashboardRows();
  return { ok: r["sim-0"] && Math.abs(r["sim-0"].expected - expected) < 0.0015, rows: r };
});
step("expected share", `sim-0 ${(exp.rows["sim-0"].expected * 100).toFixed(1)}% (${NEW_WEIGHT}/${total}) on the dashboard`);
// Bound: at least 90% of the expected share (45% here; it settles at the
// expected share once the 10 s window holds only post-change traffic), and
// 1.5x any other node's share.
const floor = 0.9 * expected;
const obs = await until("sim-0's observed share on the dashboard", 30, async () => {
  const r = await dashboardRows();
  const s0 = r["sim-0"] && r["sim-0"].share;
  const others = Object.entries(r).filter(([n]) => n !== "sim-0").map(([, v]) => v.share);
  return { ok: s0 != null && s0 >= floor && s0 >= 1.5 * Math.max(...others), s0, others };
});
step("observed share", `sim-0 ${(obs.s0 * 100).toFixed(1)}% (>= ${(floor * 100).toFixed(1)}%; others ${obs.others.map((s) => (s * 100).toFixed(1) + "%").join(", ")}) ` +
  `${((Date.now() - tSaved) / 1000).toFixed(1)} s after saving`);

// 5. Drain with the button.
await page.click('nav.tabs a[data-view="console"]');
await must(page.waitForSelector(`${row(DRAIN)} button[data-act="node-drain"]:not([disabled])`, { timeout: 10000 }), `no Drain button for ${DRAIN}`);
await page.click(`${row(DRAIN)} button[data-act="node-drain"]`);
await must(page.waitForSelector(`${row(DRAIN)} .live-state .state.draining`, { timeout: 10000 }), `${DRAIN} does not show as draining in the console`);
if (!(await page.isEnabled(`${row(DRAIN)} button[data-act="node-enable"]`))) await fail("Enable is not offered for the drained node");
if (!/draining\s*=\s*true/.test(readFileSync(configPath, "utf8"))) await fail("the file does not say draining = true");
await page.click('nav.tabs a[data-view="dashboard"]');
await until(`${DRAIN} draining on the dashboard`, 10, async () => {
  const r = await dashboardRows();
  return { ok: r[DRAIN] && r[DRAIN].state === "draining", state: r[DRAIN] && r[DRAIN].state };
});
step("drain", `${DRAIN} draining in the console, the dashboard and the file`);

// 6. Audit view.
await page.click('nav.tabs a[data-view="audit"]');
await must(page.waitForSelector("#audit-rows tr.audit-entry", { timeout: 10000 }), "the audit view lists no entries");
const audit = await page.evaluate(() => [...document.querySelectorAll("#audit-rows tr.audit-entry")].map((tr) => ({
  actor: tr.children[1].textContent, action: tr.children[2].textContent, outcome: tr.children[3].textContent.trim(),
})));
const weightEntry = audit.findIndex((e) => e.action.includes(`weight ${NEW_WEIGHT} for node chat/sim-0`) && e.outcome === "applied" && e.actor.startsWith("console"));
const drainEntry = audit.findIndex((e) => e.action.includes(`drain node chat/${DRAIN}`) && e.outcome === "applied" && e.actor.startsWith("console"));
if (weightEntry < 0) await fail("the audit log has no applied weight change by the console: " + JSON.stringify(audit));
if (drainEntry < 0) await fail("the audit log has no applied drain by the console: " + JSON.stringify(audit));
await page.click(`#audit-rows tr.audit-entry >> nth=${weightEntry} >> button[data-diff]`);
const diffText = await page.evaluate((i) => {
  const tr = document.querySelectorAll("#audit-rows tr.audit-entry")[i].nextElementSibling;
  return tr && !tr.hidden ? tr.textContent : null;
}, weightEntry);
if (!diffText || !diffText.includes(`+weight = ${NEW_WEIGHT}`)) await fail("the weight entry's diff does not open or lacks +weight = 5: " + diffText);
step("audit", `${audit.length} entries, weight and drain by ${audit[weightEntry].actor}, diff expands`);

// 7. A change made elsewhere meanwhile: the form's change gets 409, the
// console says so and reads the config again.
await page.click('nav.tabs a[data-view="console"]');
await must(page.waitForSelector(`${row("sim-1")} input[data-f="weight"]`, { timeout: 10000 }), "no weight field for sim-1");
const outside = await page.evaluate(async ({ token }) => {
  const cur = await (await fetch("/api/v1/config")).json();
  const r = await fetch("/api/v1/config/pools/chat/nodes/sim-2", {
    method: "PATCH", body: JSON.stringify({ max_concurrent: 100 }),
    headers: { "Authorization": "Bearer " + token, "If-Match": '"' + cur.version + '"', "Content-Type": "application/json", "x-infergate-actor": "console-check" },
  });
  return { status: r.status, version: (await r.json()).version };
}, { token });
if (outside.status !== 200) await fail("the change made outside the console failed: " + JSON.stringify(outside));
await page.fill(`${row("sim-1")} input[data-f="weight"]`, "3");
await page.click(`${row("sim-1")} button[data-act="node-save"]`);
await must(page.waitForFunction((v) => document.getElementById("con-version").textContent === v
  && /changed since you loaded it — reloaded/.test(document.getElementById("con-notice").textContent), outside.version, { timeout: 10000 }),
  "no conflict notice and re-read after a change made elsewhere");
if ((await page.inputValue(`${row("sim-2")} input[data-f="max_concurrent"]`)) !== "100") await fail("the re-read config does not show the change made elsewhere");
if (fileWeights()["sim-1"] !== before["sim-1"]) await fail("the conflicting weight reached the file");
step("conflict", "a change made elsewhere first: 409 notice, config re-read");

// 8. Invalid change: weight 0 -> the API's message next to the field.
const versionBefore = await page.textContent("#con-version");
await page.fill(`${row("sim-1")} input[data-f="weight"]`, "0");
await page.click(`${row("sim-1")} button[data-act="node-save"]`);
await must(page.waitForFunction((sel) => {
  const e = document.querySelector(sel + ' input[data-f="weight"] + .ferr');
  return e && /between 1 and 10000/.test(e.textContent);
}, row("sim-1"), { timeout: 10000 }), "no inline error next to sim-1's weight field");
const inline = await page.textContent(`${row("sim-1")} input[data-f="weight"] + .ferr`);
const top = await page.textContent(".con-pool .cf-msg.rows");
if (!(await page.$eval(`${row("sim-1")} input[data-f="weight"]`, (e) => e.classList.contains("bad")))) await fail("the weight field is not marked");
if (!/weight/.test(top)) await fail("no message at the top of the form: " + top);
if ((await page.textContent("#con-version")) !== versionBefore) await fail("the version changed after an invalid change");
if (fileWeights()["sim-1"] !== before["sim-1"]) await fail("the invalid weight reached the file");
step("invalid weight", `inline "${inline.trim()}", form message "${top.trim().replace(/\s+/g, " ")}"`);

// The console as it looks now: sim-0 at weight 5, sim-3 draining, the
// refused weight's message next to its field.
await page.screenshot({ path: out, fullPage: true });

// 8b. Pool thresholds through the settings form: a duration, a boolean and
// a list, written to the file with the right TOML types.
await page.click(".con-pool[data-pool=\"chat\"] details.pool-settings > summary");
await page.fill('.con-pool[data-pool="chat"] [data-f="outlier.max_ejection_time"]', "120s");
await page.selectOption('.con-pool[data-pool="chat"] [data-f="outlier.enabled"]', "false");
await page.fill('.con-pool[data-pool="chat"] [data-f="health.expected_status"]', "200, 204");
await page.click('.con-pool[data-pool="chat"] button[data-act="pool-save"]');
await until("pool settings in the file", 10, async () => {
  const text = readFileSync(configPath, "utf8");
  const ok = /max_ejection_time\s*=\s*"120s"/.test(text) && /enabled\s*=\s*false/.test(text)
    && /expected_status\s*=\s*\[\s*200,\s*204\s*\]/.test(text);
  return { ok, tail: text.slice(text.indexOf("[pools.health]"), text.indexOf("[[routes]]")) };
});
step("pool settings", "outlier.max_ejection_time = \"120s\", outlier.enabled = false, health.expected_status = [200, 204] in the file");

// 9. Roll back to the config the demo started with, from the history.
await page.click('nav.tabs a[data-view="audit"]');
await must(page.waitForSelector("#history-rows tr.history-entry:last-child button[data-rollback]", { timeout: 10000 }),
  "no rollback button for the first config in the history");
await page.click("#history-rows tr.history-entry:last-child button[data-rollback]");
await must(page.waitForFunction(() => /Rolled back/.test(document.getElementById("history-msg").textContent)
  && document.querySelector("#history-rows tr.history-entry:first-child .badge.ok"), null, { timeout: 10000 }),
  "the rollback did not report success");
const rolled = fileWeights();
if (JSON.stringify(rolled) !== JSON.stringify(before)) await fail("the file after rollback differs: " + JSON.stringify(rolled));
if (/draining\s*=\s*true/.test(readFileSync(configPath, "utf8"))) await fail("the drain survived the rollback");
step("rollback", `back to the start config from the history: weights ${JSON.stringify(rolled)}, no drain`);

if (errors.length) await fail("page errors: " + errors.join("; "));
await browser.close();
console.log(`screenshot: ${out}`);
console.log(`timings: ${timings.join("; ")}; total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
