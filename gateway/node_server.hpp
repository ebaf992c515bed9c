// A running node: the scheduler, the local worker pool, the HTTP listener, signals, pid file and
// idle exit. Everything runs on one io_context thread.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "discovery.hpp"
#include "local_pool.hpp"
#include "net.hpp"
#include "options.hpp"
#include "peer_link.hpp"
#include "peer_server.hpp"
#include "scheduler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>

#include <list>
#include <memory>
#include <unordered_map>

namespace ppgate {

class event_hub;
class rest_api;

// Open HTTP connections and the last sign of activity, for --max-connections and --idle-exit.
// Shared with each session's coroutine: a session frame destroyed with the io_context, after the
// node_server, still holds its count safely.
struct connection_tracker {
  std::size_t open = 0;
  std::unordered_map<net::ip::address, std::size_t> open_by_address;
  steady_clock::time_point last_activity = steady_clock::now();

  // Connections waiting for a request head (new, slow or idle keep-alive ones), oldest first. At
  // the connection limit one of them is closed to make room, so clients that send nothing (or
  // send slowly) cannot lock out those that send a request at once.
  struct waiting_entry {
    net::ip::tcp::socket* socket;
    net::ip::address address;
    bool* evicted;
  };
  std::list<waiting_entry> waiting_for_head;

  // At the limit, makes room for a connection from `newcomer`: closes the oldest connection
  // waiting for a head among those of the address that holds the most connections — so each
  // address keeps a fair share, and one that opens connections by the hundred closes its own.
  // False (refuse the newcomer) when none waits, or when the newcomer's address already holds
  // more than any address it could take room from.
  bool make_room_for(const net::ip::address& newcomer) {
    auto victim = waiting_for_head.end();
    std::size_t most = 0;
    for (auto it = waiting_for_head.begin(); it != waiting_for_head.end(); ++it) {
      const std::size_t held = open_by_address[it->address];
      if (held > most) {  // strictly more: the oldest of the largest holder
        most = held;
        victim = it;
      }
    }
    if (victim == waiting_for_head.end()) return false;
    const auto own = open_by_address.find(newcomer);
    if (own != open_by_address.end() && own->second + 1 > most && victim->address != newcomer) return false;
    *victim->evicted = true;
    boost::system::error_code ignored;
    victim->socket->close(ignored);
    waiting_for_head.erase(victim);
    return true;
  }

  class waiting {  // one connection waiting for a head, for as long as this lives
   public:
    waiting(connection_tracker& t, net::ip::tcp::socket& s, const net::ip::address& from) : t_(t) {
      it_ = t_.waiting_for_head.insert(t_.waiting_for_head.end(), waiting_entry{&s, from, &evicted_});
    }
    ~waiting() {
      if (!evicted_) t_.waiting_for_head.erase(it_);
    }
    waiting(const waiting&) = delete;
    waiting& operator=(const waiting&) = delete;

   private:
    connection_tracker& t_;
    std::list<waiting_entry>::iterator it_;
    bool evicted_ = false;
  };

  class scoped {  // one open connection
   public:
    scoped(std::shared_ptr<connection_tracker> t, const net::ip::address& from)
        : t_(std::move(t)), from_(from) {
      ++t_->open;
      ++t_->open_by_address[from_];
      t_->last_activity = steady_clock::now();
    }
    ~scoped() {
      --t_->open;
      if (auto it = t_->open_by_address.find(from_); it != t_->open_by_address.end() && --it->second == 0)
        t_->open_by_address.erase(it);
      t_->last_activity = steady_clock::now();
    }
    scoped(const scoped&) = delete;
    scoped& operator=(const scoped&) = delete;

   private:
    std::shared_ptr<connection_tracker> t_;
    net::ip::address from_;
  };
};

class node_server {
 public:
  node_server(net::io_context& io, serve_options opts, worker_options workers);
  ~node_server();

  // Binds the listener, starts the workers and the accept loop. Throws when it cannot listen.
  void start();
  // Stops accepting, stops every worker process, removes the pid file and stops the io_context.
  void stop();

  const serve_options& options() const { return opts_; }
  scheduler& jobs() { return scheduler_; }
  // Whether the event loop should poll rather than sleep (lib/event_loop.hpp): for --busy-poll
  // after a job session received results, while no job runs, so the client's next job is seen
  // at once. Never while a job runs: the poll would take a CPU from its worker. Jobs from peers
  // never start it: on a machine shared with the peer, it would take the CPU the peer needs.
  bool should_poll() const {
    return scheduler_.running() == 0 && steady_clock::now() - last_session_reply_ < busy_poll_;
  }
  void session_replied() { last_session_reply_ = steady_clock::now(); }
  local_pool& pool() { return pool_; }
  rest_api& api() { return *api_; }
  event_hub& events() { return *events_; }
  net::any_io_executor executor() { return io_.get_executor(); }
  std::uint16_t port() const { return port_; }

  std::string stats_table();
  std::string nodes_json();  // the local node and each peer, for /v1/nodes and the event stream
  std::size_t total_slots();  // pp's ncpus: local workers plus the peers' slots
  void resize_pool(std::optional<std::size_t> workers);  // empty: one per usable CPU

  const std::shared_ptr<connection_tracker>& connections() const { return connections_; }
  void touch() { connections_->last_activity = steady_clock::now(); }

 private:
  net::awaitable<void> accept_loop();
  net::awaitable<void> idle_watch();
  void wait_for_signals();
  void wait_for_stats_signal();
  void watch_parent();

  net::io_context& io_;
  serve_options opts_;
  scheduler scheduler_;
  local_pool pool_;
  std::unique_ptr<rest_api> api_;
  std::unique_ptr<event_hub> events_;
  std::unique_ptr<peer_server> peer_server_;
  std::vector<std::shared_ptr<peer_link>> peer_links_;
  std::unique_ptr<discovery> discovery_;
  void add_peer(const std::string& host, std::uint16_t port);
  net::ip::tcp::acceptor acceptor_;
  net::signal_set stop_signals_;
  net::signal_set stats_signal_;
  net::posix::stream_descriptor parent_watch_;  // pidfd of --parent-pid
  std::uint16_t port_ = 0;
  std::shared_ptr<connection_tracker> connections_ = std::make_shared<connection_tracker>();
  bool stopped_ = false;
  steady_clock::duration busy_poll_{};  // --busy-poll; zero on a single CPU
  steady_clock::time_point last_session_reply_{};
};

}  // namespace ppgate
