// Real ppgate nodes for the Node.js and browser tests (no dependencies of its own).
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const ppgate = process.env.PPGATE_BINARY ?? path.join(root, "build", "gateway", "ppgate");

// `ppgate serve` on a free loopback port; resolves to { child, url }, or rejects after `wait` ms.
export function startNode(args = [], env = {}, wait = 30000) {
  return new Promise((resolve, reject) => {
    const child = spawn(ppgate, ["serve", "--listen", "127.0.0.1:0", "--log-level", "warn", ...args],
                        { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...env } });
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error("ppgate did not start")); }, wait);
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); resolve({ child, url: m[1] }); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error("ppgate exited with " + code)); });
  });
}

// SIGTERM, then SIGKILL if the node has not exited within `wait` ms.
export function stopNode(child, wait = 30000) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill("SIGKILL"), wait);
    child.once("exit", () => { clearTimeout(timer); resolve(); });
    child.kill("SIGTERM");
  });
}
