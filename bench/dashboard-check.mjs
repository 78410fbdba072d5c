// Drives headless Chromium (Debian's /usr/bin/chromium) with playwright-core:
// loads the dashboard, waits until live numbers change, saves a screenshot.
// Usage: node bench/dashboard-check.mjs URL OUT.png
import { chromium } from "playwright-core";

const [url, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error("FAIL: " + msg); await browser.close(); process.exit(1); };
const page = await browser.newPage({ viewport: { width: 1440, height: 1240 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
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
