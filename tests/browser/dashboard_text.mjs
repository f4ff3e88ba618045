// Opens tine's dashboard in Debian's chromium and waits until an element
// shows a text (tests/acme.rs: a failing ACME renewal in the TLS panel).
//
//   node tests/browser/dashboard_text.mjs ADMIN_URL SELECTOR TEXT SCREENSHOT
//
// Prints the element's text once it holds TEXT and exits 0; a console or
// page error, or no such text within 20 s, exits 1.
import { launchChromium } from "./chromium.mjs";

const [url, selector, text, shot] = process.argv.slice(2);
const browser = await launchChromium();
let status = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  await page.goto(url);
  await page.waitForFunction(([s, t]) => document.querySelector(s)?.textContent.includes(t), [selector, text],
    { timeout: 20000 });
  await page.screenshot({ path: shot, fullPage: true });
  console.log(await page.$eval(selector, (e) => e.textContent));
  if (problems.length) {
    console.error(problems.join("\n"));
    status = 1;
  }
} catch (e) {
  console.error(e);
  status = 1;
} finally {
  await browser.close();
}
process.exit(status);
