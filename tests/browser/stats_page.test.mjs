// The stats page in a real browser: Debian's Chromium, headless, driven by Playwright.
// A real ppgate node serves the page; jobs go in over REST and the page's numbers must follow.
// The screenshot is kept as a test artifact (build/test-artifacts/stats-page.png).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { artifacts, launchChromium, startNode, WAIT } from "./helpers.mjs";

async function submit(url, jobs) {
  const r = await fetch(url + "/v1/jobs?wait=20", { method: "POST", body: JSON.stringify(jobs),
                                                     signal: AbortSignal.timeout(WAIT) });
  assert.equal(r.status, 200);
  return (await r.json()).jobs;
}

const text = (page, id) => page.locator("#" + id).textContent();

test("the stats page follows the node: counts, pp's table, failures, workers, resize", async () => {
  const { child, url } = await startNode(["--workers", "2", "--stats-interval", "0.25"]);
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1300, height: 1100 } });
    page.setDefaultTimeout(WAIT);
    await page.goto(url + "/");
    await page.waitForSelector("#status.live");
    await page.waitForFunction(() => document.getElementById("workers").textContent === "2");
    assert.equal(await text(page, "jobs-done"), "0");
    assert.equal(await page.locator("#pp-table tbody tr").count(), 0);

    const square = { source: "def sq(x):\n    return x*x\n", function: "sq" };
    const jobs = await submit(url, Array.from({ length: 25 }, (_, i) => ({ ...square, args: [i] })));
    assert.deepEqual(jobs.map((j) => j.result), Array.from({ length: 25 }, (_, i) => i * i));
    const boom = { source: "def boom():\n    return 1/0\n", function: "boom" };
    await submit(url, [boom, boom]);

    await page.waitForFunction(() => document.getElementById("jobs-done").textContent === "25");
    await page.waitForFunction(() => document.getElementById("jobs-failed").textContent === "2");
    assert.equal(await text(page, "jobs-submitted"), "27");
    const row = page.locator("#pp-table tbody tr").first();
    assert.equal(await row.locator("td").first().textContent(), "27");
    assert.equal(await row.locator("td.name").first().textContent(), "local");
    assert.match(await row.locator("td.python").textContent(), /^3\.\d+\.\d+/);  // the workers' Python
    assert.match(await page.locator("#failures li").first().textContent(), /ZeroDivisionError: division by zero/);
    assert.equal(await page.locator("#workers-table tbody tr").count(), 2);

    await page.fill("#count", "3");
    await page.click("#resize button");
    await page.waitForFunction(() => document.getElementById("workers").textContent === "3");
    await page.waitForFunction(() => document.querySelectorAll("#workers-table tbody tr").length === 3);
    const r = await fetch(url + "/v1/workers", { signal: AbortSignal.timeout(WAIT) });
    assert.equal((await r.json()).count, 3);

    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: path.join(artifacts, "stats-page.png"), fullPage: true });
  } finally {
    await browser.close();
    child.kill("SIGTERM");
  }
});
