// Shared by the browser tests: a real ppgate node, and Debian's Chromium driven by Playwright.
import path from "node:path";
import { chromium } from "playwright-core";
import { root } from "../js/harness.mjs";

export { root, startNode } from "../js/harness.mjs";
export const artifacts = process.env.PPGATE_ARTIFACTS ?? path.join(root, "build", "test-artifacts");
export const WAIT = 20000;  // ms: the bound on every wait in the browser tests

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: WAIT,
  });
}
