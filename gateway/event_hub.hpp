// The live event stream's source: snapshots of the node's statistics at a steady rate, and job
// events, fanned out to every event_session. It computes each snapshot once for all subscribers.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "net.hpp"
#include "scheduler.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace ppgate {

class event_session;
class node_directory;

class event_hub : public job_event_sink {
 public:
  // `sched` and `nodes` are borrowed and outlive the hub.
  event_hub(net::any_io_executor ex, scheduler& sched, const node_directory& nodes,
            std::chrono::milliseconds interval);

  void start();  // the snapshot ticker
  void stop();
  void add(const std::shared_ptr<event_session>& subscriber);

  // The current snapshot, as the stream sends it (also the newest state for tests and the page).
  std::string snapshot();

  void on_job_event(const job& j, job_event what) override;

 private:
  net::awaitable<void> tick_loop();

  net::any_io_executor ex_;
  scheduler& sched_;
  const node_directory& nodes_;
  std::chrono::milliseconds interval_;
  std::vector<std::weak_ptr<event_session>> subscribers_;
  std::size_t job_subscribers_ = 0;  // as of the last tick, so idle streams cost nothing per job
  std::uint64_t seq_ = 0;
  // Rates are measured between two snapshots.
  latency_histogram last_latency_;
  steady_clock::time_point last_time_ = steady_clock::now();
  std::optional<net::steady_timer> ticker_;
  bool stopped_ = false;
};

}  // namespace ppgate
