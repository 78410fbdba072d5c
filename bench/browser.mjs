// Shared by the browser checks: headless Debian Chromium driven by
// playwright-core, with the flags this machine's closed network needs.
import { chromium } from "playwright-core";

// A page of the given size; `fail` closes the browser and exits 1, `errors`
// collects uncaught page errors.
export async function openPage(viewport) {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const fail = async (msg) => { console.error("FAIL: " + msg); await browser.close(); process.exit(1); };
  const page = await browser.newPage({ viewport });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  return { browser, page, fail, errors };
}
