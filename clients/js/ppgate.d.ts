// Types of ppgate's JavaScript client (ppgate.mjs). Arguments and results travel as JSON, so
// they are typed as JSON values; a defined function can be given its argument and result types:
//   const sq = node.define<[number], number>("def sq(x):\n    return x*x\n", "sq");
//   const n: number = await sq(7);

/** A value that travels as JSON. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** How a job ended. `pending` until then. */
export type JobStatus = "pending" | "done" | "failed" | "cancelled" | "lost";

export interface JobErrorDetails {
  traceback?: string;
  stdout?: string;
  stderr?: string;
  id?: number | null;
  status?: JobStatus;
}

/** A job did not produce a result: the remote exception, or what ppgate saw. */
export class JobError extends Error {
  constructor(type: string, message: string, details?: JobErrorDetails);
  /** The remote exception's type (ZeroDivisionError), or ppgate's (WorkerDied, TimeoutError, ...). */
  readonly type: string;
  /** The remote exception's message. */
  readonly remoteMessage: string;
  readonly traceback: string;
  readonly stdout: string;
  readonly stderr: string;
  readonly id: number | null;
  readonly status: JobStatus;
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

/** Per-job options (docs/rest.md). */
export interface JobOptions {
  /** Jobs of one group can be waited for together; "default" otherwise. */
  group?: string;
  /** Seconds of running time after which the job is stopped (JobTimeoutError). */
  timeout?: number;
  /**
   * Extra attempts when the job fails (raises, times out, goes over the node's worker memory);
   * only the last error is reported. As many again when its worker dies.
   */
  retries?: number;
  /** Seconds before the first rerun of a failed job, doubled before each later one. */
  retry_backoff?: number;
  /** Higher runs first; first come, first served within one priority (default 0). */
  priority?: number;
  /** The job outlives this connection; its result stays on the node (GET /v1/jobs/{id}). */
  detach?: boolean;
}

/** One job, as for POST /v1/jobs. */
export interface JobSpec extends JobOptions {
  /** Python source that defines `function` (or omit it for an importable "module:name"). */
  source?: string;
  function: string;
  args?: Json[];
  kwargs?: { [name: string]: Json };
  depfuncs?: string[];
  /** Import statements or module names to import before the job runs. */
  modules?: string[];
}

/** A submitted job: await it for the result; it rejects with a JobError. */
export class Job<R = Json> implements PromiseLike<R> {
  /** This connection's number for the job. */
  readonly tag: number;
  /** The node's job id, set when the job ends. */
  readonly id: number | null;
  readonly status: JobStatus;
  readonly stdout: string;
  readonly stderr: string;
  /** The job's run time on its worker, set when it ends. */
  readonly runSeconds: number | null;
  then<T1 = R, T2 = never>(onDone?: ((value: R) => T1 | PromiseLike<T1>) | null,
                           onFailed?: ((reason: unknown) => T2 | PromiseLike<T2>) | null): Promise<T1 | T2>;
  catch<T = never>(onFailed?: ((reason: unknown) => T | PromiseLike<T>) | null): Promise<R | T>;
  finally(onEnd?: (() => void) | null): Promise<R>;
  /** Asks the node to cancel the job: a queued job is dropped, a running one stopped. */
  cancel(): void;
}

/** A Python function defined once on a connection; calling it submits a job. */
export interface DefinedFunction<A extends Json[] = Json[], R = Json> {
  (...args: A): Job<R>;
  /** The same function with other options (group, timeout, retries, priority...) for the calls it makes. */
  withOptions(options: JobOptions): (...args: A) => Job<R>;
  /** The same function called with keyword arguments. */
  withKwargs(kwargs: { [name: string]: Json }): (...args: A) => Job<R>;
  readonly pythonName: string;
}

export interface DefineOptions extends JobOptions {
  depfuncs?: string[];
  modules?: string[];
}

/** One node in GET /v1/stats and GET /v1/nodes (docs/rest.md has every field). */
export interface NodeStats {
  name: string;
  ncpus: number;
  njobs: number;
  time: number;
  python?: string;
  [field: string]: Json | undefined;
}

export interface Stats {
  nodes: NodeStats[];
  [field: string]: Json | NodeStats[] | undefined;
}

export interface NodesReport {
  nodes: { name: string; slots: number; python?: string; [field: string]: Json | undefined }[];
}

/** A connection to a ppgate node; made by connect(). */
export class Client {
  readonly url: string;
  submit<R = Json>(job: JobSpec): Job<R>;
  define<A extends Json[] = Json[], R = Json>(source: string, functionName: string,
                                              options?: DefineOptions): DefinedFunction<A, R>;
  /** `chunksize` calls per job (by default about four jobs per slot), all jobs in flight at
   * once; the results in order, or the error of the first call that raised. */
  map<T extends Json, R>(f: DefinedFunction<[T], R>, items: Iterable<T>, options?: { chunksize?: number }): Promise<R[]>;
  /** GET /v1/stats: pp's statistics. */
  stats(): Promise<Stats>;
  /** pp's print_stats() table, as text. */
  statsTable(): Promise<string>;
  /** GET /v1/nodes: the local node and its peers, with their workers. */
  nodes(): Promise<NodesReport>;
  /** The number of local workers. */
  workers(): Promise<number>;
  /** Resizes the local worker pool (a number, or "auto": one per CPU). */
  setWorkers(count: number | "auto"): Promise<{ count: number }>;
  /** Closes the session; its unfinished jobs are cancelled on the node and reject here (lost). */
  close(): void;
}

export interface ConnectOptions {
  /** The node's secret (in Node.js, $PPGATE_TOKEN when not given). */
  token?: string;
  /** Milliseconds allowed for connecting (10000). */
  timeout?: number;
}

/** Connects to the node at `url` ("http://host:port"). */
export function connect(url: string, options?: ConnectOptions): Promise<Client>;
