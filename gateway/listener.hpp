// The HTTP port: accepts connections and runs an http_session for each, within
// --max-connections (at the limit, a connection still waiting for its request head is closed to
// make room, fairly between client addresses; else the newcomer gets 503). As the listener of
// Beast's chat-multi example.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "connection_tracker.hpp"
#include "http_session.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <memory>

namespace ppgate {

class listener {
 public:
  listener(net::any_io_executor ex, std::size_t max_connections, http_services services);

  // Binds and starts accepting. Throws when it cannot listen.
  void listen(const net::ip::tcp::endpoint& endpoint);
  // Starts accepting on `fd`, a socket bound to `endpoint` and listening already (--listen-fd).
  void listen_on(int fd, const net::ip::tcp::endpoint& endpoint);
  void stop();
  std::uint16_t port() const { return port_; }
  std::size_t open_connections() const { return connections_->open(); }

 private:
  net::awaitable<void> accept_loop();

  net::any_io_executor ex_;
  std::size_t max_connections_;
  http_services services_;
  net::ip::tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::shared_ptr<connection_tracker> connections_;
};

}  // namespace ppgate
