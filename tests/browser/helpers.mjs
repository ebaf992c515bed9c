// Shared by the browser tests: a real ppgate node, and Debian's Chromium driven by Playwright.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const artifacts = process.env.PPGATE_ARTIFACTS ?? path.join(root, "build", "test-artifacts");
export const WAIT = 20000;  // ms: the bound on every wait in the browser tests
const ppgate = process.env.PPGATE_BINARY ?? path.join(root, "build", "gateway", "ppgate");

// `ppgate serve` on a free loopback port; resolves to { child, url }.
export function startNode(args = [], env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(ppgate, ["serve", "--listen", "127.0.0.1:0", "--log-level", "warn", ...args],
                        { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...env } });
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error("ppgate did not start")); }, WAIT);
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); resolve({ child, url: m[1] }); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error("ppgate exited with " + code)); });
  });
}

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: WAIT,
  });
}
