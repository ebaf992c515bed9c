#include "node_server.hpp"

#include "adopted_process.hpp"
#include "shared_memory.hpp"

#include "event_hub.hpp"
#include "listener.hpp"
#include "log.hpp"
#include "rest_api.hpp"
#include "stats_format.hpp"

#include <cstdio>
#include <fstream>
#include <sys/syscall.h>
#include <unistd.h>

namespace ppgate {

namespace {

http_limits limits_of(const serve_options& o) {
  return {o.max_body_bytes, o.max_header_bytes, o.idle_timeout, o.header_timeout};
}

}  // namespace

node_server::node_server(net::io_context& io, serve_options opts, worker_options workers)
    : io_(io),
      opts_(std::move(opts)),
      scheduler_(scheduler::options{opts_.keep_finished, opts_.keep_finished_bytes, opts_.keep_finished_for}),
      pool_(io.get_executor(), scheduler_, std::move(workers)),
      peers_(io.get_executor(), scheduler_, pool_, opts_.peers, opts_.peer),
      api_(std::make_unique<rest_api>(scheduler_, *this, opts_.secret, opts_.insecure)),
      events_(std::make_unique<event_hub>(io.get_executor(), scheduler_, *this, opts_.stats_interval)),
      listener_(std::make_unique<listener>(
          io.get_executor(), opts_.max_connections,
          http_services{*api_, scheduler_, *events_, limits_of(opts_), activity_})),
      stop_signals_(io, SIGINT),
      drain_signals_(io, SIGTERM),
      stats_signal_(io, SIGUSR1),
      parent_watch_(io) {
  scheduler_.set_executor(io.get_executor());
  if (!opts_.journal.empty()) journal_ = std::make_unique<journal>(opts_.journal, io.get_executor());
  // On a single CPU, polling would only hold up the client whose next message it waits for.
  if (local_pool::usable_cpus() > 1) busy_poll_ = opts_.busy_poll;
}

node_server::~node_server() { scheduler_.set_event_sink(nullptr); }

void node_server::start() {
  const net::ip::tcp::endpoint endpoint(net::ip::make_address(opts_.listen_host), opts_.listen_port);
  if (opts_.listen_fd >= 0) listener_->listen_on(opts_.listen_fd, endpoint);
  else listener_->listen(endpoint);

  if (!opts_.pid_file.empty()) {
    std::ofstream pid(opts_.pid_file);
    if (!pid) throw usage_error("--pid-file: cannot write '" + opts_.pid_file + "'");
    pid << ::getpid() << "\n";
  }

  watch_parent();
  if (journal_) {
    const auto taken_up = journal_->restore(scheduler_);
    log::info("journal ", opts_.journal, ": ", taken_up.finished, " finished jobs kept, ", taken_up.requeued,
              " unfinished ones queued again, ", taken_up.ended, " ended (lost with their session, or failed)");
  }
  scheduler_.set_event_sink(events_.get());
  events_->start();
  if (opts_.adopt_from >= 0)  // the first slots' first processes: the caller forks them meanwhile
    pool_.adopt(receive_adopted_workers(opts_.adopt_from, std::chrono::seconds(10)));
  resize_local(opts_.workers);
  peers_.start();
  wait_for_signals();
  if (opts_.idle_exit)
    net::co_spawn(io_, idle_watch(), log::on_failure("idle watch"));
  if (opts_.keep_finished_for)
    net::co_spawn(io_, expiry_watch(), log::on_failure("finished jobs' expiry"));

  // Tests and scripts read the real port from this first line when they ask for port 0.
  const bool v6 = endpoint.address().is_v6();
  std::printf("ppgate listening on http://%s%s%s:%u\n", v6 ? "[" : "", opts_.listen_host.c_str(),
              v6 ? "]" : "", static_cast<unsigned>(listener_->port()));
  if (peers_.listening())
    std::printf("ppgate accepting peers on %s:%u%s\n", opts_.peers.listen_host.c_str(),
                static_cast<unsigned>(peers_.port()), opts_.peer.tls.enabled() ? " (TLS)" : "");
  std::fflush(stdout);
  log::info("serving with ", pool_.size(), " workers", opts_.secret.empty() ? "" : ", bearer token required");
}

void node_server::stop() {
  if (stopped_) return;
  stopped_ = true;
  log::info("stopping");
  boost::system::error_code ec;
  listener_->stop();
  stop_signals_.cancel(ec);
  drain_signals_.cancel(ec);
  stats_signal_.cancel(ec);
  parent_watch_.close(ec);
  events_->stop();
  scheduler_.set_event_sink(nullptr);
  if (journal_) {
    // What runs now is cut short by this stop: the journal keeps it as it is, to take it up again.
    scheduler_.flush_records();
    scheduler_.set_recorder(nullptr);
  }
  peers_.stop();
  pool_.shutdown();
  shared_memory::remove_files(shared_memory::node_prefix());  // what sessions left behind
  if (!opts_.pid_file.empty()) ::unlink(opts_.pid_file.c_str());
  io_.stop();
}

void node_server::resize_local(std::optional<std::size_t> workers) {
  pool_.resize(workers ? *workers : local_pool::usable_cpus());
  peers_.capacity_changed();
}

std::vector<node_summary> node_server::nodes() const {
  std::vector<node_summary> out;
  node_summary& local = out.emplace_back();
  local.name = pool_.name();
  local.python = pool_.python_version();
  local.workers = pool_.workers();
  local.slots = local.workers.size();
  local.busy = static_cast<std::size_t>(std::count_if(local.workers.begin(), local.workers.end(),
                                                      [](const auto& w) { return w.state == worker_state::busy; }));
  for (const auto* remote : {&peers_.dialed(), &peers_.joined()})
    for (const auto& peer : *remote) {
      node_summary& n = out.emplace_back();
      n.name = peer->name();
      n.python = peer->python_version();
      n.remote = true;
      n.joined = peer->joined();
      n.slots = peer->slot_count();
      n.busy = peer->busy();
      n.connected = peer->connected();
      n.last_error = peer->last_error();
    }
  return out;
}

peer_link_summary node_server::peer_links() const {
  peer_link_summary s;
  s.counters = opts_.peer.counters;
  for (const auto* remote : {&peers_.dialed(), &peers_.joined()})
    for (const auto& peer : *remote) s.nodes_connected += peer->connected();
  for (const auto& head : peers_.heads()) s.heads_connected += head->connected();
  return s;
}

void node_server::watch_parent() {
  if (opts_.parent_pid == 0) return;
  // A pidfd turns readable when its process exits; this works for any process, not only a parent.
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(opts_.parent_pid), 0));
  if (fd < 0) throw usage_error("--parent-pid: no process " + std::to_string(opts_.parent_pid));
  parent_watch_.assign(fd);
  parent_watch_.async_wait(net::posix::descriptor_base::wait_read, [this](boost::system::error_code ec) {
    if (ec) return;
    log::info("process ", opts_.parent_pid, " exited; stopping (--parent-pid)");
    stop();
  });
}

void node_server::wait_for_signals() {
  stop_signals_.async_wait([this](boost::system::error_code ec, int sig) {
    if (ec) return;
    log::info("received signal ", sig);
    stop();
  });
  wait_for_drain_signal();
  wait_for_stats_signal();
}

void node_server::wait_for_drain_signal() {
  drain_signals_.async_wait([this](boost::system::error_code ec, int) {
    if (ec) return;
    drain();
    wait_for_drain_signal();
  });
}

void node_server::drain() {
  if (stopped_) return;
  if (drain_) {
    log::info("SIGTERM again: stopping at once");
    finish_drain("the node was stopped (a second SIGTERM) before the job finished");
    return;
  }
  const auto stats = scheduler_.stats();
  drain_.emplace();
  drain_->started = steady_clock::now();
  drain_->ended_before = stats.done + stats.failed;
  log::info("SIGTERM: draining; ", scheduler_.running(), " running jobs have up to ",
            std::chrono::duration<double>(opts_.drain_timeout).count(), " s to finish");
  scheduler_.stop_accepting("the node is draining (SIGTERM): it takes no new jobs");
  // Jobs that came from other nodes go back to them, to run elsewhere; this node's own clients'
  // jobs that had not started end lost, saying so (there is nowhere else for them here).
  drain_->handed_back = peers_.drain("the node is draining (SIGTERM)");
  drain_->lost_queued = lose_unfinished("the node is stopping (SIGTERM): the job had not started", false);
  pool_.resize(0);  // each worker stops after its job
  net::co_spawn(io_, drain_watch(), log::on_failure("drain"));
}

net::awaitable<void> node_server::expiry_watch() {
  net::steady_timer tick(io_);
  while (!stopped_) {
    scheduler_.expire_finished();
    tick.expires_after(std::chrono::seconds(1));
    co_await tick.async_wait(use_nothrow_awaitable);
  }
}

net::awaitable<void> node_server::drain_watch() {
  net::steady_timer tick(io_);
  while (!stopped_ && !drain_->finishing && scheduler_.running() > 0 &&
         steady_clock::now() - drain_->started < opts_.drain_timeout) {
    tick.expires_after(std::chrono::milliseconds(50));
    co_await tick.async_wait(use_nothrow_awaitable);
  }
  if (!stopped_ && !drain_->finishing)
    finish_drain(scheduler_.running() > 0 ? "the node stopped (SIGTERM) before the job finished: "
                                            "the drain timeout passed"
                                          : "");
}

std::size_t node_server::lose_unfinished(std::string_view why, bool running_too) {
  if (!journal_) return scheduler_.lose_unfinished(why, running_too);
  // With a journal they are not lost for good: the journal keeps them unfinished, and the node
  // takes them up when it starts again. Their clients here hear of the stop all the same.
  scheduler_.flush_records();
  scheduler_.set_recorder(nullptr);
  const std::size_t lost = scheduler_.lose_unfinished(
      std::string(why) + "; the journal keeps it, to run when the node starts again", running_too);
  scheduler_.set_recorder(journal_.get());
  return lost;
}

void node_server::finish_drain(std::string_view why) {
  if (drain_->finishing) return;
  drain_->finishing = true;
  const std::size_t lost = why.empty() ? 0 : lose_unfinished(why, true);
  const auto stats = scheduler_.stats();
  log::info("drained: ", stats.done + stats.failed - drain_->ended_before, " jobs finished, ", drain_->handed_back,
            " handed back, ", drain_->lost_queued + lost, " lost (", drain_->lost_queued, " not started, ", lost,
            " running)");
  // The last results reach their clients before the connections close.
  auto grace = std::make_shared<net::steady_timer>(io_, std::chrono::milliseconds(200));
  grace->async_wait([this, grace](boost::system::error_code) { stop(); });
}

void node_server::wait_for_stats_signal() {
  stats_signal_.async_wait([this](boost::system::error_code ec, int) {
    if (ec) return;
    // As ppserver does on SIGUSR1: print the statistics table to standard output.
    const std::string table = format_stats_table(scheduler_.stats(), total_slots());
    std::fwrite(table.data(), 1, table.size(), stdout);
    std::fflush(stdout);
    wait_for_stats_signal();
  });
}

net::awaitable<void> node_server::idle_watch() {
  net::steady_timer tick(io_);
  for (;;) {
    tick.expires_after(std::chrono::milliseconds(250));
    auto [ec] = co_await tick.async_wait(use_nothrow_awaitable);
    if (ec || stopped_) co_return;
    const bool busy = listener_->open_connections() > 0 || scheduler_.queue_depth() > 0 || scheduler_.running() > 0;
    if (busy) {
      activity_->touch();
    } else if (steady_clock::now() - activity_->last_seen >= *opts_.idle_exit) {
      log::info("idle for ", opts_.idle_exit->count(), " s; exiting (--idle-exit)");
      stop();
      co_return;
    }
  }
}

}  // namespace ppgate
