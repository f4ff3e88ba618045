// Debian's chromium, as every browser test here launches it: headless, no
// sandbox (the tests may run as root), nothing that reaches the network
// besides what the page asks for. CHROMIUM overrides the binary.
import { chromium } from "playwright-core";

export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", ...extraArgs],
  });
}
