// The JavaScript client (clients/js/ppgate.mjs) in Node.js against real ppgate nodes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  connect, JobCancelledError, JobError, JobLostError, JobTimeoutError, SubmitError, WorkerDiedError,
} from "../../clients/js/ppgate.mjs";
import { root, startNode, stopNode } from "./harness.mjs";

const WAIT = 30000;  // ms: the bound on every wait in these tests
const LIMIT = { timeout: 120000 };  // and on each test as a whole

const SQ = "def sq(x):\n    return x*x\n";
const NAP = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n";

// Settles with the job's outcome, or fails the test if it takes longer than WAIT.
function within(promise, what = "the job") {
  let timer;
  const bound = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not end within ${WAIT} ms`)), WAIT);
  });
  return Promise.race([Promise.resolve(promise), bound]).finally(() => clearTimeout(timer));
}

async function withNode(args, env, body) {
  const { child, url } = await startNode(args, env);
  try {
    await body(url, child);
  } finally {
    await stopNode(child);
  }
}

test("a job's result comes back, and a defined function's source crosses once", LIMIT, async () => {
  await withNode(["--workers", "2"], {}, async (url) => {
    const node = await connect(url);
    try {
      assert.equal(await within(node.submit({ source: SQ, function: "sq", args: [7] })), 49);
      const sent = [];
      const send = node._session._socket.send;
      node._session._socket.send = (text) => { sent.push(text); send(text); };
      const sq = node.define(SQ, "sq");
      assert.deepEqual(await within(node.map(sq, [1, 2, 3])), [1, 4, 9]);
      assert.equal(await within(sq(12)), 144);
      const withSource = sent.filter((t) => t.includes("def sq"));
      assert.equal(withSource.length, 1, "the source went once");
      const job = sq(5);
      await within(job);
      assert.equal(job.status, "done");
      assert.ok(Number.isInteger(job.id));
      assert.ok(job.runSeconds >= 0);
    } finally {
      node.close();
    }
  });
});

test("map sends chunks as map jobs and rejects with the first call that raised", LIMIT, async () => {
  await withNode(["--workers", "2"], {}, async (url) => {
    const node = await connect(url);
    try {
      const inv = node.define("def inv(x):\n    return 1 / x\n", "inv");
      const inputs = Array.from({ length: 1000 }, (_, i) => i + 1);
      const before = (await node.stats()).jobs.submitted;
      const results = await within(node.map(inv, inputs), "a map of 1000 items");
      assert.deepEqual(results, inputs.map((i) => 1 / i));
      assert.ok((await node.stats()).jobs.submitted - before <= 9, "about four jobs per slot");
      assert.deepEqual(await within(node.map(inv, [1, 2, 4], { chunksize: 2 })), [1, 0.5, 0.25]);
      await assert.rejects(within(node.map(inv, [1, 0, 2, 0], { chunksize: 3 })),
                           (e) => e instanceof JobError && e.type === "ZeroDivisionError");
      await assert.rejects(node.map(inv, [1], { chunksize: 0 }), RangeError);
    } finally {
      node.close();
    }
  });
});

test("2000 jobs go out in a few pipelined batches and all come back right", LIMIT, async () => {
  await withNode(["--workers", "2"], {}, async (url) => {
    const node = await connect(url);
    try {
      let messages = 0;
      const send = node._session._socket.send;
      node._session._socket.send = (text) => { messages++; send(text); };
      const inc = node.define("def inc(x):\n    return x+1\n", "inc");
      const inputs = Array.from({ length: 2000 }, (_, i) => i);
      const results = await within(node.map(inc, inputs, { chunksize: 1 }), "2000 jobs");
      assert.deepEqual(results, inputs.map((i) => i + 1));
      assert.ok(messages <= 2, `2000 jobs went out in ${messages} messages`);
    } finally {
      node.close();
    }
  });
});

test("kwargs, modules, depfuncs and per-call options reach the function", LIMIT, async () => {
  await withNode(["--workers", "1"], {}, async (url) => {
    const node = await connect(url);
    try {
      const hyp = node.define("def hyp(a, b=0, *, scale=1):\n    return scale * sqrt(twice(a*a + b*b) / 2)\n",
                              "hyp", { modules: ["from math import sqrt"], depfuncs: ["def twice(x):\n    return 2*x\n"] });
      assert.equal(await within(hyp(3, 4)), 5);
      assert.equal(await within(hyp.withKwargs({ scale: 10 })(3, 4)), 50);
      const nap = node.define(NAP, "nap");
      await assert.rejects(within(nap.withOptions({ timeout: 0.3 })(30)), JobTimeoutError);
    } finally {
      node.close();
    }
  });
});

test("retries rerun a failing job; priorities order a queue", LIMIT, async () => {
  await withNode(["--workers", "1"], {}, async (url) => {
    const node = await connect(url);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ppgate-js-"));
    try {
      const flaky = node.define(
        "import os\ndef flaky(counter, failures):\n" +
        "    calls = (int(open(counter).read()) if os.path.exists(counter) else 0) + 1\n" +
        "    open(counter, 'w').write(str(calls))\n" +
        "    if calls <= failures:\n        raise ConnectionError('flaky call %d' % calls)\n" +
        "    return calls\n", "flaky", { retries: 2, retry_backoff: 0.01 });
      assert.equal(await within(flaky(path.join(dir, "a"), 2)), 3);
      await assert.rejects(within(flaky.withOptions({ retries: 1 })(path.join(dir, "b"), 5)),
                           (e) => e instanceof JobError && /flaky call 2/.test(e.message));
      // One worker held by a job until a file appears; the jobs queued behind it run by priority.
      const release = path.join(dir, "release"), marks = path.join(dir, "marks");
      const hold = node.define("import os, time\ndef hold(release):\n    t = time.monotonic() + 30\n" +
                               "    while not os.path.exists(release) and time.monotonic() < t:\n" +
                               "        time.sleep(0.01)\n", "hold");
      const held = hold(release);
      const mark = node.define("def mark(path, tag):\n    open(path, 'a').write('%d\\n' % tag)\n", "mark");
      const priorities = [0, 3, 1, 3, -1, 7];
      // Once the holding job runs, the others queue; REST shows when it does.
      const started = Date.now();
      for (;;) {
        const stats = await (await fetch(`${url}/v1/stats`)).json();
        if (stats.jobs.running === 1) break;
        assert.ok(Date.now() - started < WAIT, "the holding job did not start");
        await new Promise((r) => setTimeout(r, 10));
      }
      const jobs = priorities.map((p, tag) => mark.withOptions({ priority: p })(marks, tag));
      fs.writeFileSync(release, "");
      await within(held);
      await within(Promise.all(jobs));
      const order = fs.readFileSync(marks, "utf8").trim().split("\n").map(Number);
      assert.deepEqual(order, [5, 1, 3, 2, 0, 4]);
    } finally {
      node.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("errors are loud: raised, crashed, timed out, cancelled, refused", LIMIT, async () => {
  await withNode(["--workers", "2"], {}, async (url) => {
    const node = await connect(url);
    try {
      const raised = await within(node.submit({
        source: "def f(d):\n    print('looking')\n    return d['missing']\n", function: "f", args: [{}],
      }).then(() => null, (e) => e));
      assert.ok(raised instanceof JobError);
      assert.equal(raised.type, "KeyError");
      assert.equal(raised.remoteMessage, "'missing'");
      assert.match(raised.traceback, /return d\['missing'\]/);
      assert.equal(raised.stdout, "looking\n");

      await assert.rejects(within(node.submit({ source: "import os\ndef f():\n    os._exit(3)\n", function: "f" })),
                           WorkerDiedError);

      const long = node.submit({ source: NAP, function: "nap", args: [30] });
      setTimeout(() => long.cancel(), 100);
      await assert.rejects(within(long), JobCancelledError);
      assert.equal(long.status, "cancelled");

      const refused = await within(node.submit({ source: SQ, function: "sq; rm -rf", args: [1] }).then(() => null, (e) => e));
      assert.ok(refused instanceof SubmitError);
      assert.match(refused.message, /not a Python name/);
      assert.throws(() => node.submit({ source: SQ }), TypeError);

      // The session goes on after all of that.
      assert.equal(await within(node.submit({ source: SQ, function: "sq", args: [9] })), 81);
    } finally {
      node.close();
    }
  });
});

test("the token is required when the node has a secret", LIMIT, async () => {
  await withNode(["--workers", "1"], { PPGATE_SECRET: "a-js-secret-1" }, async (url) => {
    await assert.rejects(connect(url, { token: "" }), /HTTP 401/);
    await assert.rejects(connect(url, { token: "wrong-secret" }), /HTTP 401/);
    const node = await connect(url, { token: "a-js-secret-1" });
    try {
      assert.equal(await within(node.submit({ source: SQ, function: "sq", args: [6] })), 36);
      assert.equal(await node.workers(), 1);
    } finally {
      node.close();
    }
  });
});

test("REST helpers: workers, resize, stats, pp's table, nodes", LIMIT, async () => {
  await withNode(["--workers", "1"], {}, async (url) => {
    const node = await connect(url);
    try {
      await within(node.submit({ source: SQ, function: "sq", args: [2] }));
      await node.setWorkers(3);
      assert.equal(await node.workers(), 3);
      const stats = await node.stats();
      assert.equal(stats.jobs.done, 1);
      assert.match(await node.statsTable(), /Job execution statistics/);
      assert.equal((await node.nodes()).nodes[0].name, "local");
      await assert.rejects(node.setWorkers(-1), /HTTP 400/);
    } finally {
      node.close();
    }
  });
});

test("jobs in flight when the node dies are rejected as lost, none hangs", LIMIT, async () => {
  const { child, url } = await startNode(["--workers", "1"]);
  try {
    const node = await connect(url);
    const jobs = [node.submit({ source: NAP, function: "nap", args: [30] }),
                  node.submit({ source: SQ, function: "sq", args: [3] })];
    await new Promise((r) => setTimeout(r, 200));
    child.kill("SIGKILL");
    for (const job of jobs) {
      const error = await within(job.then(() => null, (e) => e));
      assert.ok(error instanceof JobLostError, String(error));
      assert.match(error.message, /connection to the node was lost/);
    }
    assert.throws(() => node.submit({ source: SQ, function: "sq", args: [1] }), JobLostError);
  } finally {
    await stopNode(child);
  }
});

test("closing the client cancels its unfinished jobs on the node", LIMIT, async () => {
  await withNode(["--workers", "1"], {}, async (url) => {
    const node = await connect(url);
    const job = node.submit({ source: NAP, function: "nap", args: [30] });
    const other = await connect(url);
    try {
      const deadline = Date.now() + WAIT;
      while ((await other.stats()).jobs.running < 1) {
        assert.ok(Date.now() < deadline, "the job did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
      node.close();
      await assert.rejects(within(job), JobLostError);
      while ((await other.stats()).jobs.cancelled < 1) {
        assert.ok(Date.now() < deadline, "the node did not cancel the abandoned job");
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      other.close();
    }
  });
});

test("the sum_primes example prints pp's known sums", LIMIT, async () => {
  await withNode(["--workers", "2"], { PPGATE_SECRET: "an-example-secret" }, async (url) => {
    const example = path.join(root, "clients", "js", "examples", "sum_primes.mjs");
    const run = spawn(process.execPath, [example, url], {
      stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, PPGATE_TOKEN: "an-example-secret" },
    });
    let out = "", err = "";
    run.stdout.on("data", (c) => { out += c; });
    run.stderr.on("data", (c) => { err += c; });
    const code = await within(new Promise((resolve) => run.on("exit", resolve)), "the example");
    assert.equal(code, 0, err);
    const expected = { 100000: 454396537, 100100: 454996777, 100200: 455898156, 100300: 456700218,
                       100400: 457603451, 100500: 458407033, 100600: 459412387, 100700: 460217613 };
    for (const [n, total] of Object.entries(expected))
      assert.ok(out.includes(`Sum of primes below ${n} is ${total}\n`), out);
    assert.match(out, /Starting with 2 workers/);
    assert.match(out, /Job execution statistics:/);
  });
});

test("a defined function whose first job is refused is sent again with the next call", LIMIT, async () => {
  await withNode(["--workers", "1"], {}, async (url) => {
    const node = await connect(url);
    try {
      const sq = node.define(SQ, "sq");
      await assert.rejects(within(sq.withOptions({ timeout: -1 })(3)), SubmitError);
      assert.equal(await within(sq(4)), 16);
      assert.equal(await within(sq(5)), 25);
    } finally {
      node.close();
    }
  });
});
