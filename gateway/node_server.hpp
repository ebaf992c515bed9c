// A running node, wired together: the scheduler and the local worker pool (lib/), the peers
// (lib/peer/), and the HTTP side (listener, REST API, event hub); plus what a process needs
// around them: signals, the pid file, --parent-pid and --idle-exit. Everything runs on one
// io_context thread.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "activity.hpp"
#include "local_pool.hpp"
#include "net.hpp"
#include "node_directory.hpp"
#include "options.hpp"
#include "peer/peers.hpp"
#include "journal.hpp"
#include "scheduler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>

#include <memory>
#include <optional>

namespace ppgate {

class event_hub;
class listener;
class rest_api;

class node_server : public node_directory {
 public:
  node_server(net::io_context& io, serve_options opts, worker_options workers);
  ~node_server() override;

  // Binds the listeners, starts the workers and the peers. Throws when it cannot listen.
  void start();
  // Stops accepting, stops every worker process, removes the pid file and stops the io_context.
  void stop();
  // SIGTERM (docs/cli.md, "Signals"): takes no new jobs, gives back the ones not started, lets
  // the running ones finish for up to --drain-timeout, then ends what is left `lost` and stops.
  // A second call stops at once, the same way.
  void drain();

  // Whether the event loop should poll rather than sleep (lib/event_loop.hpp): for --busy-poll
  // after a job session received results, while no job runs, so the client's next job is seen
  // at once. Never while a job runs: the poll would take a CPU from its worker. Jobs from peers
  // never start it: on a machine shared with the peer, it would take the CPU the peer needs.
  bool should_poll() const {
    return scheduler_.running() == 0 && steady_clock::now() - activity_->last_session_reply < busy_poll_;
  }

  // node_directory
  std::vector<node_summary> nodes() const override;
  std::size_t local_workers() const override { return pool_.size(); }
  std::size_t total_slots() const override { return pool_.size() + peers_.remote_slots(); }
  peer_link_summary peer_links() const override;
  void resize_local(std::optional<std::size_t> workers) override;

 private:
  net::awaitable<void> idle_watch();
  net::awaitable<void> drain_watch();
  net::awaitable<void> expiry_watch();  // --keep-finished-for
  void finish_drain(std::string_view why);
  // scheduler::lose_unfinished, but with a journal the journal keeps those jobs unfinished.
  std::size_t lose_unfinished(std::string_view why, bool running_too);
  void wait_for_signals();
  void wait_for_drain_signal();
  void wait_for_stats_signal();
  void watch_parent();

  net::io_context& io_;
  serve_options opts_;
  scheduler scheduler_;
  std::unique_ptr<journal> journal_;  // --journal; destroyed after the pool, which may still record
  local_pool pool_;
  peers peers_;
  std::shared_ptr<activity> activity_ = std::make_shared<activity>();
  std::unique_ptr<rest_api> api_;
  std::unique_ptr<event_hub> events_;
  std::unique_ptr<listener> listener_;
  net::signal_set stop_signals_;   // SIGINT: at once
  net::signal_set drain_signals_;  // SIGTERM
  net::signal_set stats_signal_;
  net::posix::stream_descriptor parent_watch_;  // pidfd of --parent-pid
  bool stopped_ = false;
  struct drain_state {
    steady_clock::time_point started;
    std::uint64_t ended_before = 0;  // jobs done or failed when it started
    std::size_t handed_back = 0, lost_queued = 0;
    bool finishing = false;
  };
  std::optional<drain_state> drain_;
  steady_clock::duration busy_poll_{};  // --busy-poll; zero on a single CPU
};

}  // namespace ppgate
