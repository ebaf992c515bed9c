// A running node: the scheduler, the local worker pool, the HTTP listener, signals, pid file and
// idle exit. Everything runs on one io_context thread.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "local_pool.hpp"
#include "net.hpp"
#include "options.hpp"
#include "scheduler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>

#include <memory>

namespace ppgate {

class rest_api;

class node_server {
 public:
  node_server(net::io_context& io, serve_options opts, std::string worker_binary);
  ~node_server();

  // Binds the listener, starts the workers and the accept loop. Throws when it cannot listen.
  void start();
  // Stops accepting, stops every worker process, removes the pid file and stops the io_context.
  void stop();

  const serve_options& options() const { return opts_; }
  scheduler& jobs() { return scheduler_; }
  local_pool& pool() { return pool_; }
  rest_api& api() { return *api_; }
  std::uint16_t port() const { return port_; }

  std::string stats_table();
  void resize_pool(std::optional<std::size_t> workers);  // empty: one per usable CPU

  // HTTP connection accounting, for --max-connections and --idle-exit.
  void connection_opened();
  void connection_closed();
  void touch() { last_activity_ = steady_clock::now(); }

 private:
  net::awaitable<void> accept_loop();
  net::awaitable<void> idle_watch();
  void wait_for_signals();
  void wait_for_stats_signal();

  net::io_context& io_;
  serve_options opts_;
  scheduler scheduler_;
  local_pool pool_;
  std::unique_ptr<rest_api> api_;
  net::ip::tcp::acceptor acceptor_;
  net::signal_set stop_signals_;
  net::signal_set stats_signal_;
  std::uint16_t port_ = 0;
  std::size_t connections_ = 0;
  steady_clock::time_point last_activity_ = steady_clock::now();
  bool stopped_ = false;
};

}  // namespace ppgate
