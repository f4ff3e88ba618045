// Loads a page with many assets from a TLS listener in Debian's chromium
// and reports, as one JSON line on stdout, the protocol each was fetched
// with and whether each arrived whole (tests/http2.rs starts tine).
//
//   node tests/browser/page_h2.mjs URL HOST_RESOLVER_RULE
import { launchChromium } from "./chromium.mjs";

const [url, rule] = process.argv.slice(2);
const browser = await launchChromium([`--host-resolver-rules=${rule}`]);
let status = 0;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("requestfailed", (r) => problems.push("failed: " + r.url() + " " + (r.failure()?.errorText || "")));
  await page.goto(url, { waitUntil: "load", timeout: 20000 });
  const report = await page.evaluate(() => ({
    page: performance.getEntriesByType("navigation")[0].nextHopProtocol,
    assets: performance.getEntriesByType("resource").map((e) => e.nextHopProtocol),
    images: [...document.images].filter((i) => i.complete && i.naturalWidth > 0).length,
    scripts: window.loaded || 0,
  }));
  console.log(JSON.stringify({ ...report, problems }));
} catch (e) {
  console.error(e);
  status = 1;
} finally {
  await browser.close();
}
process.exit(status);
