// Opening a listening TCP socket, the same way for the HTTP port and the peer port.
#pragma once

#include "net.hpp"

#include <boost/asio/ip/tcp.hpp>

namespace ppgate {

// Opens, binds (reusing the address of a node that just stopped) and listens; throws when it
// cannot. Returns the port bound (the real one when `endpoint` asked for port 0).
inline std::uint16_t bind_and_listen(net::ip::tcp::acceptor& acceptor, const net::ip::tcp::endpoint& endpoint) {
  acceptor.open(endpoint.protocol());
  acceptor.set_option(net::socket_base::reuse_address(true));
  acceptor.bind(endpoint);
  acceptor.listen(net::socket_base::max_listen_connections);
  return acceptor.local_endpoint().port();
}

}  // namespace ppgate
