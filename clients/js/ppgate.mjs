// ppgate's JavaScript client: run Python functions on a ppgate node from Node.js or a browser.
//
//   import { connect } from "ppgate";
//   const node = await connect("http://127.0.0.1:8080", { token });
//   const sq = node.define("def sq(x):\n    return x*x\n", "sq");
//   await sq(7);                                  // 49
//   await node.map(sq, [1, 2, 3]);                // [1, 4, 9]
//   node.close();
//
// All jobs share one WebSocket job session (docs/rest.md, "Sessions"): the jobs submitted in one
// turn of the event loop go out as one batch, results are pushed as jobs end, and a defined
// function's source crosses the connection once. Arguments and results travel as JSON.
// No dependencies: in Node.js (18 or later) the WebSocket is spoken over node:net; in a browser,
// the native WebSocket is used and the token travels as ?access_token=.

// --- errors (as the Python client's) ---

export class JobError extends Error {
  constructor(type, message, { traceback = "", stdout = "", stderr = "", id = null, status = "failed" } = {}) {
    super(`${type}: ${message}`);
    this.name = new.target.name;
    this.type = type;
    this.remoteMessage = message;
    this.traceback = traceback;
    this.stdout = stdout;
    this.stderr = stderr;
    this.id = id;
    this.status = status;
  }
}
/** The worker process running the job died (os._exit, a segfault, the OOM killer). */
export class WorkerDiedError extends JobError {}
/** The job ran longer than its `timeout` and was stopped. */
export class JobTimeoutError extends JobError {}
/** The job was cancelled (job.cancel(), or its session closed). */
export class JobCancelledError extends JobError {}
/** The job's fate is unknown: the connection to the node was lost, or the node lost it. */
export class JobLostError extends JobError {}
/** The node refused the job; the message says why. */
export class SubmitError extends JobError {}

function errorFromResult(r) {
  const err = r.error ?? {};
  const type = err.type ?? r.status;
  const details = { traceback: err.traceback ?? "", stdout: r.stdout ?? "", stderr: r.stderr ?? "",
                    id: r.id ?? null, status: r.status };
  if (r.status === "lost") return new JobLostError(type, err.message ?? "", details);
  if (r.status === "cancelled" || type === "Cancelled") return new JobCancelledError(type, err.message ?? "", details);
  if (type === "WorkerDied") return new WorkerDiedError(type, err.message ?? "", details);
  if (type === "TimeoutError") return new JobTimeoutError(type, err.message ?? "", details);
  return new JobError(type, err.message ?? "", details);
}

// --- jobs ---

const MAX_BATCH = 5000;
const OPTION_FIELDS = ["group", "timeout", "retries", "retry_backoff", "priority", "detach"];
const JOB_FIELDS = ["args", "kwargs", ...OPTION_FIELDS];
const FUNCTION_FIELDS = ["source", "function", "depfuncs", "modules"];

/**
 * A submitted job. Await it (it is a thenable) for the result; it rejects with a JobError when
 * the job failed, timed out, was cancelled or lost. `id`, `status`, `stdout`, `stderr` and
 * `runSeconds` are set when it ends.
 */
export class Job {
  constructor(session, tag) {
    this.tag = tag;
    this.id = null;
    this.status = "pending";
    this.stdout = "";
    this.stderr = "";
    this.runSeconds = null;
    this._session = session;
    this._promise = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this._promise.catch(() => {});  // a job nobody awaits must not crash Node on its failure
  }

  then(onDone, onFailed) { return this._promise.then(onDone, onFailed); }
  catch(onFailed) { return this._promise.catch(onFailed); }
  finally(onEnd) { return this._promise.finally(onEnd); }

  /** Asks the node to cancel the job: a queued job is dropped, a running one stopped. */
  cancel() {
    if (this.status === "pending") this._session.cancel(this);
  }

  _end(r) {
    if (this.status !== "pending") return;
    this.id = r.id ?? null;
    this.status = r.status;
    this.stdout = r.stdout ?? "";
    this.stderr = r.stderr ?? "";
    this.runSeconds = r.run_seconds ?? null;
    if (r.status === "done") this._resolve(r.result);
    else this._reject(errorFromResult(r));
  }

  _fail(error) {
    if (this.status !== "pending") return;
    this.status = error.status;
    this._reject(error);
  }
}

// --- the session: one WebSocket, pipelined batches, pushed results ---

class Session {
  constructor(socket) {
    this._socket = socket;
    this._jobs = new Map();  // tag -> Job, from submission until its result arrives
    this._outgoing = [];     // job objects not sent yet
    this._flushScheduled = false;
    this._nextTag = 1;
    this._nextFnId = 1;
    this._error = null;      // set once the connection is gone
    socket.start((text) => this._handle(text), (why) => this._lost(new JobLostError("ConnectionLost",
      `the connection to the node was lost: ${why}`, { status: "lost" })));
  }

  submit(fields) {
    if (this._error) throw this._error;
    const job = new Job(this, this._nextTag++);
    this._jobs.set(job.tag, job);
    this._outgoing.push({ ...fields, tag: job.tag });
    if (!this._flushScheduled) {
      // Everything submitted in this turn of the event loop goes out as one batch.
      this._flushScheduled = true;
      queueMicrotask(() => this._flush());
    }
    return job;
  }

  newFnId() { return this._nextFnId++; }

  cancel(job) {
    if (this._error || !this._jobs.has(job.tag)) return;
    this._flush();  // the job must reach the node before its cancel does
    this._socket.send(JSON.stringify({ cancel: job.tag }));
  }

  close() {
    this._lost(new JobLostError("Closed", "the session was closed", { status: "lost" }));
    this._socket.close();
  }

  _flush() {
    this._flushScheduled = false;
    if (this._error) return;
    while (this._outgoing.length > 0) {
      const batch = this._outgoing.splice(0, MAX_BATCH);
      this._socket.send(JSON.stringify(batch));
    }
  }

  _handle(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;  // not ours to fail a job over; the node only sends JSON
    }
    if (Array.isArray(message.results)) {
      for (const r of message.results) {
        const job = this._jobs.get(r.tag);
        if (!job) continue;
        this._jobs.delete(r.tag);
        job._end(r);
      }
      return;
    }
    const reason = message.error?.message ?? `the node sent ${text}`;
    for (const tag of message.rejected ?? []) {
      const job = this._jobs.get(tag);
      if (!job) continue;
      this._jobs.delete(tag);
      job._fail(new SubmitError("SubmitError", reason, { status: "failed" }));
    }
  }

  _lost(error) {
    if (this._error) return;
    this._error = error;
    this._outgoing = [];
    const waiting = [...this._jobs.values()];
    this._jobs.clear();
    for (const job of waiting) job._fail(error);
  }
}

// --- the client ---

/** A connection to a ppgate node; made by connect(). */
export class Client {
  constructor(url, token, session) {
    this.url = url;
    this._token = token;
    this._session = session;
  }

  /**
   * Submits one job: `{source, function, args, kwargs, depfuncs, modules, group, timeout,
   * retries, retry_backoff, priority}` as for POST /v1/jobs (docs/rest.md). Returns a Job, which resolves to the result.
   */
  submit(job) {
    if (typeof job !== "object" || job === null) throw new TypeError("submit() takes a job object");
    if (typeof job.function !== "string") throw new TypeError("a job needs 'function' (a string)");
    return this._session.submit(pick(job, [...FUNCTION_FIELDS, ...JOB_FIELDS]));
  }

  /**
   * Defines a Python function once for this connection and returns a JavaScript function that
   * submits a job of it: `f(...args)` returns a Job. `options`: depfuncs, modules (the function's
   * imports), and defaults for group, timeout, retries, retry_backoff and priority.
   * `f.withOptions({timeout})(...args)`
   * overrides them for one call; `f.withKwargs(kwargs)(...args)` passes keyword arguments.
   */
  define(source, functionName, options = {}) {
    if (typeof source !== "string") throw new TypeError("define() takes the function's Python source");
    if (typeof functionName !== "string") throw new TypeError("define() takes the function's name");
    const definition = { source, function: functionName, ...pick(options, ["depfuncs", "modules"]) };
    const defaults = pick(options, OPTION_FIELDS);
    let fnId = null;
    const call = (extra, args) => {
      const fields = { ...defaults, ...extra, args };
      if (fnId !== null) return this._session.submit({ ...fields, fn_id: fnId });
      // The first job carries the source. If the node refuses that job, it has not defined the
      // function either: the next call sends the source again.
      const id = fnId = this._session.newFnId();
      const job = this._session.submit({ ...definition, ...fields, fn_id: id });
      job.catch((e) => { if (e instanceof SubmitError && fnId === id) fnId = null; });
      return job;
    };
    const f = (...args) => call({}, args);
    f.withOptions = (opts) => (...args) => call(pick(opts, OPTION_FIELDS), args);
    f.withKwargs = (kwargs) => (...args) => call({ kwargs }, args);
    // A map job (docs/rest.md, "Map jobs"): one call per item, one job; used by map().
    f._mapJob = (items) => call({ map: true }, items.map((item) => [item]));
    f.pythonName = functionName;
    return f;
  }

  /** Runs `f` (a defined function) on each item of `items`, `options.chunksize` calls per job
   * (by default about four jobs per slot of the node, as Python's Pool.map picks it), all jobs in
   * flight at once; resolves to the results in order, or rejects with the error of the first
   * call (in order) that raised. */
  async map(f, items, options = {}) {
    if (typeof f !== "function" || !f._mapJob) throw new TypeError("map() takes a function made by define()");
    const all = Array.from(items);
    let chunksize = options.chunksize;
    if (chunksize === undefined) {
      const slots = Math.max(1, (await this.stats()).ncpus);
      chunksize = Math.max(1, Math.ceil(all.length / (slots * 4)));
    } else if (!Number.isInteger(chunksize) || chunksize < 1) {
      throw new RangeError("chunksize must be an integer >= 1");
    }
    const jobs = [];
    for (let i = 0; i < all.length; i += chunksize) jobs.push(f._mapJob(all.slice(i, i + chunksize)));
    const results = [];
    for (const { values, errors } of await Promise.all(jobs)) {
      if (errors.length > 0) {
        const e = errors[0];
        throw new JobError(e.type, e.message, { traceback: e.traceback });
      }
      for (const v of values) results.push(v);
    }
    return results;
  }

  /** GET /v1/stats: pp's statistics. */
  stats() { return this._rest("GET", "/v1/stats"); }
  /** pp's print_stats() table, as text. */
  statsTable() { return this._rest("GET", "/v1/stats", undefined, "text/plain"); }
  /** GET /v1/nodes: the local node and its peers, with their workers. */
  nodes() { return this._rest("GET", "/v1/nodes"); }
  /** The number of local workers. */
  async workers() { return (await this._rest("GET", "/v1/workers")).count; }
  /** Resizes the local worker pool (a number, or "auto": one per CPU). */
  setWorkers(count) { return this._rest("PUT", "/v1/workers", { count }); }

  /** Closes the session; its unfinished jobs are cancelled on the node and reject here (lost). */
  close() { this._session.close(); }

  async _rest(method, path, body, accept = "application/json") {
    const headers = { Accept: accept };
    if (this._token) headers.Authorization = "Bearer " + this._token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    if (!r.ok) {
      let message = text;
      try { message = JSON.parse(text).error.message; } catch { /* not JSON: the text says it */ }
      throw new Error(`${method} ${path}: HTTP ${r.status}: ${message}`);
    }
    return accept === "text/plain" ? text : JSON.parse(text);
  }
}

function pick(object, keys) {
  const out = {};
  for (const k of keys) if (object[k] !== undefined) out[k] = object[k];
  return out;
}

/**
 * Connects to the node at `url` ("http://host:port"). `options.token`: the node's secret (in
 * Node.js, also $PPGATE_TOKEN). `options.timeout`: milliseconds allowed for connecting (10000).
 * Rejects with an Error carrying the node's message when the node refuses (401, 403, ...).
 */
export async function connect(url, options = {}) {
  const parsed = new URL(url);
  if (parsed.protocol !== "http:") throw new TypeError(`url must look like http://HOST:PORT, not ${url}`);
  const base = `${parsed.protocol}//${parsed.host}`;
  const token = options.token ?? (typeof process !== "undefined" ? process.env?.PPGATE_TOKEN : undefined);
  const timeout = options.timeout ?? 10000;
  const socket = isNode()
    ? await nodeWebSocket(parsed.hostname, Number(parsed.port || 80), "/v1/session", token, timeout)
    : await browserWebSocket(base, token, timeout);
  return new Client(base, token, new Session(socket));
}

function isNode() {
  return typeof process !== "undefined" && Boolean(process.versions?.node) && typeof window === "undefined";
}

// --- transports: {send(text), close(), start(onMessage, onClose)} ---

// What both transports share: messages and a close that happen before start() wait for it.
function transportEvents() {
  let onMessage = null, onClose = null, closedWhy = null;
  const early = [];
  return {
    deliver(text) { if (onMessage) onMessage(text); else early.push(text); },
    closed(why) {
      if (closedWhy !== null) return;
      closedWhy = why;
      if (onClose) onClose(why);
    },
    start(message, close) {
      onMessage = message;
      onClose = close;
      for (const text of early.splice(0)) onMessage(text);
      if (closedWhy !== null) onClose(closedWhy);
    },
  };
}

function browserWebSocket(base, token, timeout) {
  return new Promise((resolve, reject) => {
    let url = base.replace(/^http/, "ws") + "/v1/session";
    if (token) url += "?access_token=" + encodeURIComponent(token);
    const ws = new WebSocket(url);
    const events = transportEvents();
    const transport = { send: (t) => ws.send(t), close: () => ws.close(1000), start: events.start };
    const timer = setTimeout(() => { ws.close(); reject(new Error("connecting to the node timed out")); }, timeout);
    ws.onopen = () => { clearTimeout(timer); resolve(transport); };
    ws.onmessage = (e) => events.deliver(e.data);
    ws.onclose = (e) => {
      clearTimeout(timer);
      // A browser does not say why an upgrade failed (a wrong token, a foreign Origin).
      reject(new Error("the node refused the session (check the token and the page's origin)"));
      events.closed(`closed (${e.code})`);
    };
  });
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// RFC 6455 client frames over node:net: masked text frames out, unmasked frames in.
async function nodeWebSocket(host, port, path, token, timeout) {
  const net = await import("node:net");
  const crypto = await import("node:crypto");
  const key = crypto.randomBytes(16).toString("base64");
  const socket = net.connect({ host, port, noDelay: true });
  const events = transportEvents();
  const transport = { send: null, close: null, start: events.start };
  let closed = false;
  const fail = (why) => {
    if (closed) return;
    closed = true;
    socket.destroy();
    events.closed(why);
  };

  const writeFrame = (opcode, payload) => {
    const n = payload.length;
    const header = n < 126 ? Buffer.from([0x80 | opcode, 0x80 | n])
      : n < 65536 ? Buffer.from([0x80 | opcode, 0x80 | 126, n >> 8, n & 255])
        : Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | 127]), u64(n)]);
    const mask = crypto.randomBytes(4);
    const masked = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) masked[i] = payload[i] ^ mask[i & 3];
    socket.write(Buffer.concat([header, mask, masked]));
  };
  transport.send = (text) => { if (!closed) writeFrame(0x1, Buffer.from(text, "utf8")); };
  transport.close = () => {
    if (closed) return;
    const code = Buffer.from([0x03, 0xe8]);  // 1000: normal closure
    writeFrame(0x8, code);
    socket.end();
    closed = true;
    events.closed("closed by this client");
  };

  let buffer = Buffer.alloc(0);
  let fragments = [];
  const onFrames = () => {
    for (;;) {
      if (buffer.length < 2) return;
      const b0 = buffer[0], b1 = buffer[1];
      let n = b1 & 0x7f, at = 2;
      if (n === 126) { if (buffer.length < 4) return; n = buffer.readUInt16BE(2); at = 4; }
      else if (n === 127) { if (buffer.length < 10) return; n = Number(buffer.readBigUInt64BE(2)); at = 10; }
      if (b1 & 0x80) return fail("the node sent a masked frame");
      if (buffer.length < at + n) return;
      const payload = buffer.subarray(at, at + n);
      buffer = buffer.subarray(at + n);
      const opcode = b0 & 0x0f;
      if (opcode === 0x9) { writeFrame(0xa, payload); continue; }  // ping: answer
      if (opcode === 0xa) continue;                                // pong
      if (opcode === 0x8) return fail("the node closed the session");
      fragments.push(Buffer.from(payload));
      if (b0 & 0x80) {
        const text = Buffer.concat(fragments).toString("utf8");
        fragments = [];
        events.deliver(text);
      }
    }
  };

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.destroy(); reject(new Error("connecting to the node timed out")); }, timeout);
    let head = Buffer.alloc(0);
    let upgraded = false;
    socket.on("connect", () => {
      const lines = [`GET ${path} HTTP/1.1`, `Host: ${host}:${port}`, "Upgrade: websocket",
                     "Connection: Upgrade", `Sec-WebSocket-Key: ${key}`, "Sec-WebSocket-Version: 13"];
      if (token) lines.push(`Authorization: Bearer ${token}`);
      socket.write(lines.join("\r\n") + "\r\n\r\n");
    });
    socket.on("data", (chunk) => {
      if (upgraded) { buffer = Buffer.concat([buffer, chunk]); onFrames(); return; }
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      const text = head.subarray(0, end).toString("latin1");
      const status = Number(text.split(" ")[1]);
      if (status !== 101) {
        // The refusal's body is JSON with the node's message; wait for it briefly.
        const length = Number(/content-length:\s*(\d+)/i.exec(text)?.[1] ?? 0);
        const body = head.subarray(end + 4);
        if (body.length < length) return;
        clearTimeout(timer);
        socket.destroy();
        let message = body.toString("utf8") || text.split("\r\n")[0];
        try { message = JSON.parse(message).error.message; } catch { /* plain text */ }
        reject(new Error(`HTTP ${status}: ${message}`));
        return;
      }
      const accept = /sec-websocket-accept:\s*(\S+)/i.exec(text)?.[1];
      const expected = crypto.createHash("sha1").update(key + GUID).digest("base64");
      clearTimeout(timer);
      if (accept !== expected) {
        socket.destroy();
        reject(new Error("the node answered the WebSocket upgrade wrongly"));
        return;
      }
      upgraded = true;
      buffer = head.subarray(end + 4);
      resolve(transport);
      onFrames();
    });
    socket.on("error", (e) => { clearTimeout(timer); if (!upgraded) reject(e); else fail(e.message); });
    socket.on("close", () => {
      clearTimeout(timer);
      if (upgraded) fail("the node closed the connection");
      else reject(new Error("the node closed the connection before the WebSocket upgrade"));  // no-op once settled
    });
  });
}

function u64(n) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}
