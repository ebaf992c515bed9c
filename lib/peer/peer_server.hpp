// The ppserver role: accepts peers on --peer-listen, authenticates them, and runs the jobs they
// send on this node's own workers, answering with results. It also tells connected peers when
// the local pool is resized, so their view of this node's capacity follows. A node that dials to
// join (ppgate serve --join) is authenticated alike, and its link handed to `on_join`.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "local_pool.hpp"
#include "peer_channel.hpp"
#include "scheduler.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <memory>
#include <vector>

namespace ppgate {

class peer_server {
 public:
  // Takes over an authenticated link from a joining node (peer_channel's adopting constructor);
  // without one, joining nodes are refused.
  using join_handler = std::function<void(peer_channel& authenticated)>;

  peer_server(net::any_io_executor ex, scheduler& sched, local_pool& pool, const peer_settings& settings,
              join_handler on_join = {});
  ~peer_server();

  void listen(const net::ip::tcp::endpoint& endpoint);  // throws when it cannot
  std::uint16_t port() const { return port_; }
  void capacity_changed();  // the local pool was resized
  std::size_t drain(std::string_view why);  // serving_channel::drain on every link
  void stop();

 private:
  class connection;
  net::awaitable<void> accept_loop();

  net::any_io_executor ex_;
  scheduler& sched_;
  local_pool& pool_;
  const peer_settings& settings_;
  join_handler on_join_;
  std::shared_ptr<net::ssl::context> tls_;
  net::ip::tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::vector<std::weak_ptr<connection>> connections_;
  // Connections still in their handshake. Past the cap, new ones are closed at once: strangers
  // cannot tie up this node's descriptors (each handshake also has a deadline).
  std::size_t handshaking_ = 0;
  static constexpr std::size_t max_handshaking = 64;
};

}  // namespace ppgate
