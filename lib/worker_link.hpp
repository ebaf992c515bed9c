// A slot of the local node: one ppgate-worker process at a time, replaced whenever it dies, is
// timed out, is cancelled, or (with restart_after_each_job) finishes a job.
// Owned by local_pool through shared_ptr; its supervising coroutine holds one more reference, so a
// retired link lives until its process is reaped. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "frame.hpp"
#include "scheduler.hpp"
#include "worker_process.hpp"

#include <memory>
#include <string>
#include <unordered_set>

namespace ppgate {

class local_pool;

struct worker_options {
  std::string binary;                    // path of ppgate-worker
  bool restart_after_each_job = false;   // pp's restart=True
};

struct worker_info {
  long pid = 0;                // 0 while (re)starting
  std::string state;           // starting, idle, busy, stopping
  std::uint64_t job = 0;       // running job id, or 0
  std::uint64_t jobs_run = 0;  // completed on this slot, over all its processes
  std::uint64_t sources_sent = 0;  // function sources sent; a repeated function sends none
};

class worker_link : public slot, public std::enable_shared_from_this<worker_link> {
 public:
  worker_link(net::any_io_executor ex, scheduler& sched, local_pool& pool,
              const worker_options& opts);

  void launch();     // starts supervising: spawn, serve, reap, repeat
  void retire();     // leave the pool: now if idle, after the running job otherwise
  void stop_now();   // shutdown: kill and reap the process synchronously
  worker_info info() const;

  node& owner() override;
  void start(job& j) override;
  void abort() override;

 private:
  net::awaitable<void> supervise();
  net::awaitable<void> serve();
  void on_reply(std::string_view frame);
  void on_timeout(std::uint64_t job_id);
  void become_idle();

  net::any_io_executor ex_;
  scheduler& sched_;
  local_pool& pool_;
  const worker_options& opts_;
  std::unique_ptr<worker_process> proc_;
  std::uint64_t generation_ = 0;  // counts processes, so stale callbacks can tell they are stale
  std::unordered_set<std::string> known_functions_;  // hashes whose source this process has
  net::steady_timer deadline_;
  frame_reader reader_;
  std::string outbox_;
  job* current_ = nullptr;
  bool idle_ = false;
  bool retiring_ = false;
  std::uint64_t jobs_run_ = 0;
  std::uint64_t sources_sent_ = 0;
};

// Builds the run message a worker receives for `j` (exposed for tests).
std::string build_run_message(const job& j, bool include_source);

}  // namespace ppgate
