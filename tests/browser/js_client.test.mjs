// The JavaScript client (clients/js/ppgate.mjs) in a real browser: Debian's Chromium, headless.
// The page is the node's own stats page (GET / needs no token), so the client runs in the node's
// origin, as a page the node serves would; Playwright serves the client module next to it.
// The node has a secret: in a browser, the client sends it as ?access_token=.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { launchChromium, root, startNode, WAIT } from "./helpers.mjs";

const SECRET = "a-browser-secret";
const client = readFileSync(path.join(root, "clients", "js", "ppgate.mjs"), "utf8");

test("the JS client runs jobs from a browser page over the native WebSocket", async () => {
  const { child, url } = await startNode(["--workers", "2"], { PPGATE_SECRET: SECRET });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(WAIT);
    await page.route(url + "/ppgate.mjs", (r) => r.fulfill({ contentType: "text/javascript", body: client }));
    await page.goto(url + "/");

    const outcome = await page.evaluate(async ({ secret, wait }) => {
      const bounded = (p) => Promise.race([p, new Promise((_, reject) =>
        setTimeout(() => reject(new Error("no answer in time")), wait))]);
      const { connect, JobError } = await import("/ppgate.mjs");
      const refused = await bounded(connect(location.origin, { token: "wrong" }).then(() => "accepted", (e) => e.message));
      const node = await bounded(connect(location.origin, { token: secret }));
      try {
        const sq = node.define("def sq(x):\n    return x*x\n", "sq");
        const squares = await bounded(node.map(sq, [1, 2, 3, 4]));
        const failed = await bounded(node.submit({ source: "def f():\n    raise ValueError('nope')\n", function: "f" })
          .then(() => null, (e) => ({ isJobError: e instanceof JobError, type: e.type, message: e.remoteMessage })));
        const stats = await bounded(node.stats());
        return { refused, squares, failed, done: stats.jobs.done };
      } finally {
        node.close();
      }
    }, { secret: SECRET, wait: WAIT });

    assert.match(outcome.refused, /refused the session/);
    assert.deepEqual(outcome.squares, [1, 4, 9, 16]);
    assert.deepEqual(outcome.failed, { isJobError: true, type: "ValueError", message: "nope" });
    assert.equal(outcome.done, 4);
  } finally {
    await browser.close();
    child.kill("SIGTERM");
  }
});
