#include "node_server.hpp"

#include "event_hub.hpp"
#include "http_session.hpp"
#include "log.hpp"
#include "rest_api.hpp"
#include "json_writer.hpp"
#include "stats_format.hpp"

#include <boost/asio/write.hpp>

#include <cstdio>
#include <fstream>
#include <sys/syscall.h>
#include <unistd.h>

namespace ppgate {

node_server::node_server(net::io_context& io, serve_options opts, worker_options workers)
    : io_(io),
      opts_(std::move(opts)),
      scheduler_(scheduler::options{opts_.keep_finished, opts_.keep_finished_bytes}),
      pool_(io.get_executor(), scheduler_, std::move(workers)),
      api_(std::make_unique<rest_api>(*this)),
      events_(std::make_unique<event_hub>(*this, opts_.stats_interval)),
      acceptor_(io),
      stop_signals_(io, SIGINT, SIGTERM),
      stats_signal_(io, SIGUSR1),
      parent_watch_(io) {
  // On a single CPU, polling would only hold up the client whose next message it waits for.
  if (local_pool::usable_cpus() > 1) busy_poll_ = opts_.busy_poll;
}

node_server::~node_server() { scheduler_.set_event_sink(nullptr); }

void node_server::start() {
  const net::ip::tcp::endpoint endpoint(net::ip::make_address(opts_.listen_host), opts_.listen_port);
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(net::socket_base::reuse_address(true));
  acceptor_.bind(endpoint);
  acceptor_.listen(net::socket_base::max_listen_connections);
  port_ = acceptor_.local_endpoint().port();

  if (!opts_.pid_file.empty()) {
    std::ofstream pid(opts_.pid_file);
    if (!pid) throw usage_error("--pid-file: cannot write '" + opts_.pid_file + "'");
    pid << ::getpid() << "\n";
  }

  watch_parent();
  scheduler_.set_event_sink(events_.get());
  events_->start();
  resize_pool(opts_.workers);
  if (!opts_.peer_listen_host.empty()) {
    peer_server_ = std::make_unique<peer_server>(io_.get_executor(), scheduler_, pool_, opts_.peer);
    peer_server_->listen({net::ip::make_address(opts_.peer_listen_host), opts_.peer_listen_port});
    if (opts_.peer_listen_port == 0)  // the name peers know this node by needs the real port
      opts_.peer.name = opts_.peer_listen_host + ":" + std::to_string(peer_server_->port());
  }
  for (const auto& [host, port] : opts_.peers) add_peer(host, port);
  if (opts_.discover) {
    discovery_options d;
    d.cluster = opts_.cluster;
    d.port = opts_.discover_port;
    d.announce = peer_server_ ? opts_.peer.name : std::string{};
    d.bind_host = opts_.peer_listen_host;
    discovery_ = std::make_unique<discovery>(
        io_.get_executor(), d, [this](const std::string& host, std::uint16_t port) { add_peer(host, port); });
    discovery_->start();
  }
  wait_for_signals();
  net::co_spawn(io_, accept_loop(), log::on_failure("listener"));
  if (opts_.idle_exit)
    net::co_spawn(io_, idle_watch(), log::on_failure("idle watch"));

  // Tests and scripts read the real port from this first line when they ask for port 0.
  const bool v6 = endpoint.address().is_v6();
  std::printf("ppgate listening on http://%s%s%s:%u\n", v6 ? "[" : "", opts_.listen_host.c_str(),
              v6 ? "]" : "", static_cast<unsigned>(port_));
  if (peer_server_)
    std::printf("ppgate accepting peers on %s:%u%s\n", opts_.peer_listen_host.c_str(),
                static_cast<unsigned>(peer_server_->port()), opts_.peer.tls.enabled() ? " (TLS)" : "");
  std::fflush(stdout);
  log::info("serving with ", pool_.size(), " workers", opts_.secret.empty() ? "" : ", bearer token required");
}

void node_server::stop() {
  if (stopped_) return;
  stopped_ = true;
  log::info("stopping");
  boost::system::error_code ec;
  acceptor_.close(ec);
  stop_signals_.cancel(ec);
  stats_signal_.cancel(ec);
  parent_watch_.close(ec);
  events_->stop();
  scheduler_.set_event_sink(nullptr);
  if (peer_server_) peer_server_->stop();
  if (discovery_) discovery_->stop();
  for (auto& link : peer_links_) link->stop();
  pool_.shutdown();
  if (!opts_.pid_file.empty()) ::unlink(opts_.pid_file.c_str());
  io_.stop();
}

void node_server::resize_pool(std::optional<std::size_t> workers) {
  pool_.resize(workers ? *workers : local_pool::usable_cpus());
  if (peer_server_) peer_server_->capacity_changed();
}

void node_server::add_peer(const std::string& host, std::uint16_t port) {
  const std::string name = host + ":" + std::to_string(port);
  for (const auto& link : peer_links_)
    if (link->name() == name) return;
  auto link = std::make_shared<peer_link>(io_.get_executor(), scheduler_, host, port, opts_.peer,
                                          opts_.peer_inflight);
  peer_links_.push_back(link);
  link->launch();
}

std::size_t node_server::total_slots() {
  std::size_t n = pool_.size();
  for (const auto& link : peer_links_) n += link->slot_count();
  return n;
}

std::string node_server::stats_table() {
  return format_stats_table(scheduler_.stats(), total_slots());
}

std::string node_server::nodes_json() {
  std::string out = format_nodes_json(pool_);
  out.pop_back();  // the closing ']'
  for (const auto& link : peer_links_) {
    out += ",{\"name\":";
    append_json_string(out, link->name());
    out += ",\"python\":";
    append_json_string(out, link->python_version());
    out += ",\"kind\":\"remote\",\"slots\":" + std::to_string(link->slot_count()) +
           ",\"busy\":" + std::to_string(link->busy()) + ",\"connected\":";
    out += link->connected() ? "true" : "false";
    out += ",\"last_error\":";
    append_json_string(out, link->last_error());
    out += '}';
  }
  out += ']';
  return out;
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
  wait_for_stats_signal();
}

void node_server::wait_for_stats_signal() {
  stats_signal_.async_wait([this](boost::system::error_code ec, int) {
    if (ec) return;
    // As ppserver does on SIGUSR1: print the statistics table to standard output.
    const std::string table = stats_table();
    std::fwrite(table.data(), 1, table.size(), stdout);
    std::fflush(stdout);
    wait_for_stats_signal();
  });
}

net::awaitable<void> node_server::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow_awaitable);
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      // Out of file descriptors and the like: back off instead of spinning.
      log::warn("accept: ", ec.message());
      net::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_nothrow_awaitable);
      continue;
    }
    boost::system::error_code no_peer;
    const net::ip::address from = socket.remote_endpoint(no_peer).address();
    if (no_peer) continue;  // it hung up already
    if (connections_->open >= opts_.max_connections && !connections_->make_room_for(from)) {
      // Answer right away and close; a fresh socket's send buffer takes this without blocking.
      static const std::string busy =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
          "Content-Length: 58\r\n\r\n{\"error\":{\"message\":\"too many connections; retry later\"}}";
      boost::system::error_code ignored;
      socket.non_blocking(true, ignored);
      socket.write_some(net::buffer(busy), ignored);
      socket.close(ignored);
      continue;
    }
    boost::system::error_code ignored;
    socket.set_option(net::ip::tcp::no_delay(true), ignored);
    net::co_spawn(io_, run_http_session(std::move(socket), from, *this),
                  log::on_failure("http session"));
  }
}

net::awaitable<void> node_server::idle_watch() {
  net::steady_timer tick(io_);
  for (;;) {
    tick.expires_after(std::chrono::milliseconds(250));
    auto [ec] = co_await tick.async_wait(use_nothrow_awaitable);
    if (ec || stopped_) co_return;
    const bool busy = connections_->open > 0 || scheduler_.queue_depth() > 0 || scheduler_.running() > 0;
    if (busy) {
      touch();
    } else if (steady_clock::now() - connections_->last_activity >= *opts_.idle_exit) {
      log::info("idle for ", opts_.idle_exit->count(), " s; exiting (--idle-exit)");
      stop();
      co_return;
    }
  }
}

}  // namespace ppgate
