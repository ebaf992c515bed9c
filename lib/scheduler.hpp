// The scheduler: a queue of jobs and the nodes whose slots run them. Jobs go by priority, higher
// first, and first come, first served within one priority.
//
// It sees only nodes with slots; the local worker pool is one node and each peer will be another.
// A free slot pulls the next job (slot_ready), so faster slots take more work: pp's dynamic load
// balancing. Slots report back with finish() or interrupted().
//
// Runs on one io_context thread. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "job.hpp"
#include "net.hpp"

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ppgate {

class node {
 public:
  virtual ~node() = default;
  virtual const std::string& name() const = 0;
  virtual std::size_t slot_count() const = 0;
  // The version of the Python its workers run ("3.12.1"); empty while unknown.
  virtual const std::string& python_version() const = 0;
  virtual bool remote() const { return false; }  // a peer: jobs marked local_only never go there
};

// One place a job can run. The scheduler calls start() on a slot that has said it is ready, and
// abort(j) to take back a started job (cancel); the slot reports the end of a started job exactly
// once through scheduler::finish, interrupted or requeue, unless it was taken back.
// A slot may hold short jobs behind the running one (slot_can_prefetch), so its worker never
// waits for a round trip between short jobs.
class slot {
 public:
  virtual ~slot() = default;
  virtual node& owner() = 0;
  virtual void start(job& j) = 0;
  virtual void abort(job& j) = 0;
};

struct node_counters {
  std::string name;
  std::string python;        // the node's Python version, when known
  std::size_t ncpus = 0;     // the node's slots now
  std::uint64_t njobs = 0;   // jobs that ran to completion (done or failed by the job itself)
  double job_time = 0;       // sum of their run times, seconds
};

// Job latency (submission to end) of ended jobs, as a cumulative-count histogram.
struct latency_histogram {
  static constexpr std::array<double, 15> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                   0.25,  0.5,    1,     2.5,  5,     10,   30, 60};
  std::array<std::uint64_t, bounds.size() + 1> counts{};  // per bucket; the last is +Inf
  std::uint64_t count = 0;
  double sum = 0;

  void add(double seconds);
  // The latency below which `q` (0..1) of the observations in `since`-to-now fall, estimated
  // from the buckets; 0 when there were none.
  double quantile_since(const latency_histogram& since, double q) const;
};

// A job that failed recently, for the stats page.
struct failure_record {
  std::uint64_t id = 0;
  std::string function;
  std::string node;
  double unix_time = 0;
  std::string outcome;  // the job's outcome members ("error":{...},"stdout":...)
};

// Why a worker process was replaced (ppgate_worker_restarts_total{reason}).
enum class restart_reason : std::uint8_t {
  died,       // it exited or crashed by itself, or its link broke
  timeout,    // its job ran past its timeout
  cancelled,  // its running job was cancelled
  max_jobs,   // it ran --max-jobs-per-worker jobs (or --restart's one)
  memory,     // over --max-worker-memory, after a job or during one
  job_state,  // its job left threads, alarms, signal handlers or children behind
  protocol,   // job code tampered with the worker's link
};
inline constexpr std::size_t restart_reason_count = 7;
std::string_view to_string(restart_reason r);

struct scheduler_stats {
  double elapsed_seconds = 0;
  std::uint64_t submitted = 0, queued = 0, running = 0, done = 0, failed = 0, cancelled = 0,
                lost = 0, retried = 0, worker_restarts = 0;
  std::array<std::uint64_t, restart_reason_count> restarts_by_reason{};
  std::vector<node_counters> nodes;
  latency_histogram latency;
  latency_histogram run_time;  // of each run (reruns included), as its worker measured it
};

enum class job_event { queued, started, ended };

// Told of every job's progress (the live event stream). Implementations must be cheap: this runs
// inside the scheduler, for every job.
class job_event_sink {
 public:
  virtual ~job_event_sink() = default;
  virtual void on_job_event(const job& j, job_event what) = 0;
};

// Told of every accepted job, of each start and each return to the queue, of each end, and of
// finished jobs forgotten: the durable journal (--journal, lib/journal.hpp). Calls come from
// inside the scheduler, so an implementation batches its writes.
class job_recorder {
 public:
  virtual ~job_recorder() = default;
  virtual void job_submitted(const job& j) = 0;
  virtual void job_changed(const job& j) = 0;  // started, or queued again (a retry)
  virtual void job_ended(const job& j) = 0;
  virtual void job_forgotten(const job& j) = 0;
  // Makes what was recorded durable now (before a submission is acknowledged).
  virtual void flush() = 0;
};

// A job as a journal kept it, to take up again after a restart (scheduler::restore).
struct restored_job {
  std::uint64_t id = 0, seq = 0;
  job_state state = job_state::queued;
  int attempts = 0, interruptions = 0, failures = 0;
  std::string node, outcome;  // ended ones
  double run_seconds = 0;
  double finished_unix = 0;
};

class scheduler {
 public:
  struct options {
    // Finished jobs kept for GET /v1/jobs/{id}; the oldest are forgotten beyond this.
    std::size_t keep_finished = 100000;
    // ...and at most this many bytes of their results and output, the oldest forgotten first.
    std::size_t keep_finished_bytes = 512u * 1024 * 1024;
    // ...and for at most this long after they ended (none: no limit); see expire_finished().
    std::optional<std::chrono::seconds> keep_finished_for;
  };

  explicit scheduler(options opts);
  // The executor a job waits on before it is rerun after a failure (job_spec::retry_backoff).
  // Without one, such jobs rerun at once.
  void set_executor(net::any_io_executor ex) { executor_ = std::move(ex); }
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  // Returns the shared definition for `def`, reusing one already known with the same hash.
  std::shared_ptr<const function_def> intern(function_def def);

  // With spec.requested_id, the job gets that id: the caller has checked that it is free
  // (ids_taken); otherwise the next of the node's own.
  job& submit(job_spec spec);
  job* find(std::uint64_t id);
  // Why these jobs cannot be submitted as they are: an id one of them chooses
  // (job_spec::requested_id) is a job's this node knows, or comes twice. Empty when all are free.
  std::string ids_taken(const std::vector<job_spec>& specs) const;

  // GET /v1/jobs: the jobs known here (finished ones up to --keep-finished) in submission order,
  // those of `group` and `state` when given, from after the one with sequence number `after`;
  // at most `limit` of them.
  struct listing_filter {
    std::optional<std::string> group;
    std::optional<job_state> state;
    std::uint64_t after = 0;
    std::size_t limit = 100;
  };
  std::vector<const job*> list(const listing_filter& f) const;
  // Forgets the finished jobs older than options::keep_finished_for (the node calls it each second).
  void expire_finished();

  // Drain (SIGTERM): from now on submitters are refused with `why` before they call submit().
  void stop_accepting(std::string why) { refusal_ = std::move(why); }
  bool accepting() const { return refusal_.empty(); }
  const std::string& refusal() const { return refusal_; }
  // A queued job goes back to whoever gave it (a peer runs it elsewhere): it ends cancelled here,
  // saying so. False for a job that is not queued.
  bool hand_back(std::uint64_t id, std::string_view why);
  // Ends every queued job (`running_too`: and every running one, taken back from its slot) as
  // lost with `why`; returns how many.
  std::size_t lose_unfinished(std::string_view why, bool running_too);

  enum class cancel_result { cancelled, already_finished, not_found };
  cancel_result cancel(std::uint64_t id);

  // Wakes `waiter` (by cancelling it) when `j` reaches a terminal state.
  void notify_on_end(job& j, const std::shared_ptr<net::steady_timer>& waiter);

  // --- called by slots ---
  void slot_ready(slot& s);  // s is idle: it gets the next job now, or when one arrives
  // s is running a job and could hold one more behind it, expected to take less than `budget`
  // seconds: it gets the next job now or when one arrives, if that job's function is known to
  // be that short (and it has no timeout, which needs a known start).
  void slot_can_prefetch(slot& s, double budget);
  void slot_gone(slot& s);   // s takes no more jobs (stopping or restarting)
  void finish(job& j, job_state end, std::string outcome, double run_seconds);
  // The job ran here and failed (raised, timed out, went over its worker's memory): it is rerun,
  // after its backoff, while its retries last; then it ends failed with this last outcome.
  void failed(job& j, std::string outcome, double run_seconds);
  // The slot lost j mid-run: retry it or end it. A worker that died fails it once its retries are
  // spent; a lost node (`node_lost`) requeues it up to node_loss_retries times at least, then
  // it ends `lost`.
  void interrupted(job& j, std::string_view why, bool node_lost = false);
  static constexpr int node_loss_retries = 3;
  void requeue(job& j);  // the slot gives back j, which never started: no attempt is counted
  void count_worker_restart(restart_reason why) {
    ++counters_.worker_restarts;
    ++counters_.restarts_by_reason[static_cast<std::size_t>(why)];
  }

  void register_node(const node& n);
  scheduler_stats stats() const;
  // The last failed jobs, newest last.
  const std::deque<failure_record>& recent_failures() const { return recent_failures_; }
  void set_event_sink(job_event_sink* sink) { events_ = sink; }  // borrowed; null for none
  void set_recorder(job_recorder* r) { recorder_ = r; }           // borrowed; null for none
  void flush_records() {
    if (recorder_ != nullptr) recorder_->flush();
  }
  // Takes up a job from the journal, before any other: an ended one is kept for its record; an
  // unfinished one goes to the queue (the caller counted an interrupted attempt if it ran).
  // Neither is recorded again.
  job& restore(job_spec spec, const restored_job& r);
  std::size_t queue_depth() const { return counters_.queued; }
  std::size_t running() const { return counters_.running; }
  std::size_t idle_slots() const { return idle_.size(); }

  // Expected run time a slot may hold waiting behind its running job (the sum of the means of
  // their functions): enough to hide a round trip, too little to unbalance the slots.
  static constexpr double prefetch_budget_seconds = 0.001;

 private:
  void dispatch(slot& s, job& j);
  void enqueue(job& j, bool at_front);
  // A running job goes back to state queued (counters, recorder, events); `now`: into the queue,
  // to be dispatched (otherwise a backoff timer puts it there).
  void back_to_queue(job& j, bool now);
  void rerun_after_backoff(job& j);
  void count_run(job& j, double run_seconds);
  void dispatch_to_waiting_slot();
  job* pop_next_queued(bool for_remote = false);
  job* peek_next_queued();
  static bool prefetchable(const job& j, double budget);
  void remember_finished(job& j);
  void forget_oldest_finished();
  node_counters& counters_for(const std::string& node_name);

  options opts_;
  std::string refusal_;  // while draining: why no job is accepted
  steady_clock::time_point created_ = steady_clock::now();
  std::uint64_t next_id_ = 1;
  std::uint64_t next_seq_ = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<job>> jobs_;
  std::vector<const node*> nodes_;
  // Ids by priority, highest first, in submission order within one (retries and jobs given back
  // go to the front of theirs); cancelled entries are skipped when popped, not searched for.
  // Buckets other than priority 0's are dropped when they empty.
  std::map<int, std::deque<std::uint64_t>, std::greater<int>> queue_;
  std::optional<net::any_io_executor> executor_;
  std::deque<std::uint64_t> finished_order_;
  std::size_t finished_bytes_ = 0;  // outcome bytes of the jobs in finished_order_
  std::deque<slot*> idle_;
  struct prefetch_offer {
    slot* s;
    double budget;
  };
  std::deque<prefetch_offer> prefetching_;  // busy slots that would take one short job more
  std::unordered_map<std::string, std::weak_ptr<const function_def>> functions_;
  scheduler_stats counters_;
  std::deque<failure_record> recent_failures_;
  job_event_sink* events_ = nullptr;
  job_recorder* recorder_ = nullptr;
};

}  // namespace ppgate
