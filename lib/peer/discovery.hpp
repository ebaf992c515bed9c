// Discovery of peers on the local network (--discover): UDP broadcasts on the port
// `discovery_options::port` saying "PPGATE-DISCOVER 1 <cluster> <advertised host:port>", sent every
// two seconds on the interfaces that carry the peer listener (all broadcast-capable IPv4
// interfaces when it listens on 0.0.0.0), and heard on every interface. A node heard from is only
// a candidate: it is dialed as a peer and used once it has proven the secret.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "net.hpp"

#include <boost/asio/ip/udp.hpp>

#include <functional>
#include <optional>
#include <set>
#include <string>

namespace ppgate {

struct discovery_options {
  std::string cluster = "ppgate";
  std::uint16_t port = 7099;
  std::string announce;      // "host:port" this node announces; empty: it only listens
  std::string bind_host;     // the peer listener's address: which interfaces to announce on
  std::chrono::milliseconds interval{2000};
};

class discovery {
 public:
  using found_handler = std::function<void(const std::string& host, std::uint16_t port)>;

  discovery(net::any_io_executor ex, discovery_options opts, found_handler found);
  void start();  // throws when the UDP port cannot be bound
  void stop();

 private:
  net::awaitable<void> listen_loop();
  void announce();

  net::any_io_executor ex_;
  discovery_options opts_;
  found_handler found_;
  net::ip::udp::socket socket_;
  net::steady_timer ticker_;
  std::set<std::string> known_;
  bool stopped_ = false;
};

}  // namespace ppgate
