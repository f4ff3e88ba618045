// Drives Debian's chromium against tine's dashboard, in step with
// tests/dashboard.rs, which starts tine, makes load and kills a worker.
//
//   node tests/browser/dashboard.mjs ADMIN_URL SCREENSHOT_DIR
//
// Protocol on stdout/stdin, one line each: prints `load-seen PID PID...`
// once the page shows the load, then reads `killed PID`; prints
// `respawn-seen` once the page shows the new worker, then reads
// `upgraded PID` (after a reload and a binary upgrade); prints
// `upgrade-seen` once the page follows the new master, then reads
// `stopped`; prints `ok` once the page says the server stopped answering.
// Any console error, page error, request outside the admin listener before
// the stop, or a request rate that went negative or spiked fails the run
// (exit 1).
import { launchChromium } from "./chromium.mjs";
import readline from "node:readline";

const [url, shots] = process.argv.slice(2);
const origin = new URL(url).origin;
const input = readline.createInterface({ input: process.stdin });
const queued = [];
const waiting = [];
input.on("line", (line) => (waiting.length ? waiting.shift()(line) : queued.push(line)));
const nextLine = () => new Promise((resolve) => (queued.length ? resolve(queued.shift()) : waiting.push(resolve)));
const wait = { timeout: 20000 };

const problems = [];
let stopped = false;
const browser = await launchChromium();
let status = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error" && !stopped) problems.push("console: " + m.text()); });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("request", (r) => { if (!r.url().startsWith(origin)) problems.push("request outside the admin listener: " + r.url()); });
  await page.goto(url);

  // The request rate and every worker's row show the load.
  await page.waitForFunction(() => Number(document.querySelector("#rps").dataset.value) > 5, null, wait);
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll("#workers tbody td[data-rps]")];
    return cells.length >= 2 && cells.every((td) => Number(td.dataset.rps) > 0);
  }, null, wait);
  await page.waitForFunction(() => document.querySelector("#latency").textContent.includes("ms"), null, wait);
  await page.waitForFunction(() => [...document.querySelectorAll("#upstreams tbody tr")]
    .some((r) => r.textContent.includes("up") && !r.textContent.includes("—")), null, wait);
  // The client limit's refusals show in its row.
  await page.waitForFunction(() => Number(document.querySelector('#limits tbody tr[data-limit="scrapers"]')?.dataset.refused) > 0, null, wait);
  const pids = await page.$$eval("#workers tbody tr", (rows) => rows.map((r) => r.dataset.pid));
  await page.screenshot({ path: `${shots}/dashboard-load.png`, fullPage: true });
  console.log("load-seen " + pids.join(" "));

  // A killed worker is replaced, and the page says so.
  const killed = (await nextLine()).split(" ")[1];
  await page.waitForFunction((pid) => {
    const rows = [...document.querySelectorAll("#workers tbody tr")];
    return rows.every((r) => r.dataset.pid !== pid)
      && rows.some((r) => (r.querySelector(".respawn")?.textContent || "").startsWith("respawned"));
  }, killed, wait);
  await page.screenshot({ path: `${shots}/dashboard-respawn.png`, fullPage: true });
  await page.screenshot({ path: `${shots}/dashboard.jpg`, type: "jpeg", quality: 55, fullPage: true });

  // At a phone's width nothing but the tables' own scrollers is wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) problems.push(`the page is ${overflow}px wider than a 390px screen`);
  await page.screenshot({ path: `${shots}/dashboard-phone.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 1000 });
  console.log("respawn-seen");

  // Across a reload and an upgrade the page follows the new master, and the
  // rate it drew never went negative or jumped: a jump from counters that
  // restarted would be many times the steady load.
  const master = (await nextLine()).split(" ")[1];
  await page.waitForFunction((pid) => document.querySelector("#meta").textContent.includes(`master ${pid} `), master, wait);
  await page.waitForFunction(() => state.rps.length >= 3 && Number(document.querySelector("#rps").dataset.value) > 5, null, wait);
  const series = await page.evaluate(() => state.rps.map((p) => p.v));
  const sorted = [...series].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  if (series.some((v) => !Number.isFinite(v) || v < 0)) problems.push("a rate that is negative or not a number: " + series);
  if (series.some((v) => v > 10 * median)) problems.push(`a spike above 10x the median ${median}: ${series}`);
  await page.screenshot({ path: `${shots}/dashboard-upgraded.png`, fullPage: true });
  console.log("upgrade-seen");

  // The server stops: the page says it is not answering.
  await nextLine();
  stopped = true;
  await page.waitForFunction(() => {
    const s = document.querySelector("#status");
    return s.classList.contains("down") && s.textContent.includes("No answer");
  }, null, wait);
  await page.screenshot({ path: `${shots}/dashboard-stopped.png` });
  if (problems.length) {
    console.error(problems.join("\n"));
    status = 1;
  } else {
    console.log("ok");
  }
} catch (e) {
  console.error(String(e && e.stack || e));
  if (problems.length) console.error(problems.join("\n"));
  status = 1;
} finally {
  await browser.close();
  input.close();
}
process.exit(status);
