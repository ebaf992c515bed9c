// A slot of the local node: one worker process at a time, replaced whenever it dies, is
// timed out, is cancelled, or has run --max-jobs-per-worker jobs (pp's restart=True: one).
//
// The worker runs one job at a time, in the order the jobs were written to it. Behind the running
// job the link may place short jobs, up to about a millisecond of expected work
// (scheduler::slot_can_prefetch), so the worker goes from one short job to the next without
// waiting for a round trip through the gateway, and writes and reads are batched. Such a job has
// not started: if the worker is stopped, it goes back to the queue without an attempt counted; if
// it is cancelled, the worker is told to skip it. Jobs are placed only behind a job whose function
// is known to be short, and when that job runs far longer than usual (stall check), the jobs
// behind it are taken back for other slots: the worker is told to skip them, and they are
// requeued at once when the worker is certain to get the note before it could start them.
// Owned by local_pool through shared_ptr; its supervising coroutine holds one more reference, so a
// retired link lives until its process is reaped. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "frame.hpp"
#include "scheduler.hpp"
#include "worker_memory.hpp"
#include "worker_protocol.hpp"
#include "worker_process.hpp"

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

namespace ppgate {

class local_pool;

struct worker_options {
  worker_command command;                // how a worker process starts
  std::string python_version;            // of command.python, as probe_python found it
  // A fresh process after this many jobs (0: no limit; 1: pp's restart=True, after every job).
  std::size_t max_jobs_per_process = 0;
  // --max-worker-memory (0: none). The worker checks itself after each job and, without
  // `cgroups`, caps its address space (command.extra_args say so); with them, each slot's worker
  // runs in a cgroup of its own capped at this (worker_memory.hpp).
  std::uint64_t max_memory = 0;
  const worker_cgroups* cgroups = nullptr;  // borrowed; null: RLIMIT_AS in the worker
};

enum class worker_state { starting, idle, busy, stopping };
std::string_view to_string(worker_state s);

struct worker_info {
  long pid = 0;                // 0 while (re)starting
  worker_state state = worker_state::starting;
  std::uint64_t job = 0;       // running job id, or 0
  std::uint64_t jobs_run = 0;  // completed on this slot, over all its processes
  std::uint64_t sources_sent = 0;  // function sources sent; a repeated function sends none
};

class worker_slot : public slot, public std::enable_shared_from_this<worker_slot> {
 public:
  worker_slot(net::any_io_executor ex, scheduler& sched, local_pool& pool,
              const worker_options& opts);

  // Starts supervising: spawn, serve, reap, repeat. An adopted process (--adopt-from) serves
  // first, provisionally: it is a fork of the client, so once it has run jobs and the queue has
  // none left for it, a fresh interpreter takes its place (a hand-over, not counted a restart).
  // That one is started then, and readied while the adopted process goes on serving: the slot
  // switches at the first moment it is idle after the fresh one answered (ready_successor), so
  // no job waits for an interpreter to start.
  void launch(std::unique_ptr<worker_process> adopted = nullptr);
  void retire();     // leave the pool: now if idle, after the running job otherwise
  void stop_now();   // shutdown: kill and reap the process synchronously
  worker_info info() const;

  node& owner() override;
  void start(job& j) override;
  void abort(job& j) override;

 private:
  // A job written to the worker. `j` is null once the job was taken back (cancelled); its reply,
  // if the worker still sends one, is then ignored.
  struct in_flight {
    std::uint64_t id;
    job* j;
    bool skip_sent = false;  // taken back by a stall check; the worker's reply tells if it ran
  };

  net::awaitable<void> supervise();
  // Starts the fresh process that takes an adopted one's place, unless one is under way.
  void start_successor();
  // Pings the successor and waits for its answer: then it serves, and the slot hands over as soon
  // as it is idle. A successor that fails is dropped, and the hand-over spawns as before.
  net::awaitable<void> ready_successor(std::uint64_t serial);
  // The slot is idle with nothing queued, and its adopted process has done its part.
  void hand_over_when_idle();
  void drop_successor();  // kills (and reaps) a successor the slot will not take
  void spawn_process();  // a fresh worker process (in this slot's cgroup, with one) into proc_
  net::awaitable<void> serve();
  // Feeds what the worker sent to the frame reader and handles each reply; false once the
  // process is being replaced for a bad frame.
  bool consume(const char* data, std::size_t n);
  void on_reply(std::string_view frame);
  // `asked`: the worker has answered a probe since the deadline passed.
  void on_timeout(std::uint64_t job_id, bool asked = false);
  // The worker may be holding the running job's reply back, gone on to the jobs behind it: it
  // had enough waiting (held_replies.hpp). Its silence then does not say it is still on that job.
  bool may_hold_front_reply() const;
  // Signals the worker to say where it is; `then(taken_up)` runs on its answer (after the
  // replies it held): every job after `taken_up` it takes up after reading what was sent before
  // the probe. `then(nullopt)` when no answer came in time; not run if the process goes first.
  using probe_callback = std::function<void(std::optional<std::uint64_t>)>;
  void probe(probe_callback then);
  void on_probe_answer(std::uint64_t taken_up);
  // Takes the jobs told to skip that come after `taken_up` back to the queue: certain to be skipped.
  void requeue_skipped_after(std::uint64_t taken_up);
  // Job code wrote to the link (a reply out of turn, or bytes that are no frame).
  void on_link_abuse();
  void become_running(job& j, bool was_waiting);
  // The stall check: a timer at the running job's start plus a few times its function's mean.
  void arm_stall_check();
  void on_stall_check(std::uint64_t serial);
  void take_back_waiting();
  void ask_for_work();
  // The process has been sent all the jobs --max-jobs-per-worker allows it.
  bool spent() const { return opts_.max_jobs_per_process != 0 && process_jobs_ >= opts_.max_jobs_per_process; }
  void release_forgotten_values();
  void send(std::string_view payload);
  void write_outbox();
  void stop_process_and_requeue_waiting(restart_reason why);
  // Takes the slot out of the scheduler (no idle offer, no prefetch offer, start() refused).
  void leave_scheduler();
  // Leaves the scheduler and kills the process; supervise() reaps it and starts a fresh one and
  // counts the restart under `why` (the first reason given for this process).
  void replace_process(restart_reason why);
  // The process is to stop for good (the slot retires): nothing is counted.
  void stop_process();
  // The outcome of a job whose worker the kernel killed for crossing the memory limit.
  std::string memory_kill_outcome() const;

  net::any_io_executor ex_;
  scheduler& sched_;
  local_pool& pool_;
  const worker_options& opts_;
  std::unique_ptr<worker_process> proc_;
  std::unique_ptr<worker_process> adopted_;  // serves before the first process is spawned
  bool provisional_ = false;  // proc_ is an adopted process, to be handed over when idle
  bool handing_over_ = false;  // proc_ is being stopped for a fresh one (nothing to count)
  std::unique_ptr<worker_process> successor_;  // the fresh process being readied to take over
  bool successor_ready_ = false;     // it answered the ping: it serves
  bool successor_failed_ = false;    // one failed: hand over the plain way (stop, then spawn)
  std::uint64_t successor_serial_ = 0;  // counts successors, so a stale readiness check can tell
  std::unique_ptr<worker_cgroup> cgroup_;  // with --max-worker-memory and cgroups: this slot's
  std::uint64_t oom_kills_seen_ = 0;       // the cgroup's count when the current process started
  std::optional<restart_reason> restart_reason_;  // why the current process is being replaced
  std::size_t process_jobs_ = 0;   // jobs sent to this process
  std::uint64_t generation_ = 0;  // counts processes, so stale callbacks can tell they are stale
  // The functions this process has been sent, by hash: the fn_id it knows each by.
  std::unordered_map<std::string, std::int64_t> fn_ids_;
  // The values put once that this process has been sent, by key; expired: it may drop its copy.
  std::unordered_map<std::uint64_t, std::weak_ptr<const shared_value>> values_;
  net::steady_timer deadline_;
  frame_reader reader_;
  std::string writing_;   // the frames being written now
  std::string outbox_;    // frames queued behind them
  bool flush_posted_ = false;  // a write of outbox_ is due at the end of this turn
  std::vector<probe_callback> probe_waiters_;  // for the probe signalled
  std::vector<probe_callback> probe_next_;     // for one signalled after it
  bool probe_sent_ = false;                    // its answer is awaited
  bool probe_fallback_armed_ = false;
  net::steady_timer probe_timer_;              // acts without an answer after max_probe_wait
  std::deque<in_flight> in_flight_;  // front: running (or about to); at most max_in_flight_
  std::uint64_t frames_sent_ = 0;     // to this process; each frame carries its number
  std::deque<std::uint64_t> recently_finished_;  // ids of this process's last replies
  net::steady_timer stall_timer_;
  bool stall_armed_ = false;
  bool stalled_ = false;              // the running job is overdue: nothing more goes behind it
  std::uint64_t front_serial_ = 0;    // counts jobs that became the running one
  steady_clock::time_point front_started_{};
  std::size_t max_in_flight_;
  bool idle_ = false;
  // True while the current process serves and the slot may be given jobs; false from the moment
  // the process is to be replaced (killed, crashed, timed out) until a fresh one serves.
  bool accepting_ = false;
  bool retiring_ = false;
  bool replied_ = false;  // the current process has sent a reply
  std::uint64_t jobs_run_ = 0;
  std::uint64_t sources_sent_ = 0;
};

// How long a job may run before the jobs waiting behind it are taken back: a few times its
// function's mean, and never less than a few round trips (exposed for tests).
std::chrono::nanoseconds stall_limit(const function_def& f);

}  // namespace ppgate
