// Drives headless Chromium (Debian's /usr/bin/chromium) with playwright-core:
// loads the dashboard, waits until live numbers change, saves a screenshot.
// Usage: node bench/dashboard-check.mjs URL OUT.png
import { openPage } from "./browser.mjs";

const [url, out] = process.argv.slice(2);
const { browser, page, fail, errors } = await openPage({ width: 1440, height: 1240 });
const t0 = Date.now();
await page.goto(url);
await page.waitForSelector("#live.on", { timeout: 10000 }).catch(() => fail("event stream never went live"));
await page.waitForSelector("tbody tr", { timeout: 10000 }).catch(() => fail("no node rows"));
const loadMs = Date.now() - t0;
const read = () => page.evaluate(() => ({
  updated: document.getElementById("updated").textContent,
  requests: [...document.querySelectorAll("tbody tr")].map((r) => r.children[11].textContent).join(","),
  rows: document.querySelectorAll("tbody tr").length,
}));
const a = await read();
await page.waitForTimeout(2500);
const b = await read();
console.log(`load ${loadMs} ms; rows ${b.rows}; updated ${a.updated} -> ${b.updated}; requests ${a.requests} -> ${b.requests}`);
if (a.updated === b.updated) await fail("snapshot time did not change");
if (a.requests === b.requests) await fail("request counters did not change");
if (errors.length) await fail("page errors: " + errors.join("; "));
await page.screenshot({ path: out, fullPage: true });
await browser.close();
console.log("screenshot: " + out);
