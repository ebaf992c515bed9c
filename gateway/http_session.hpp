// One HTTP/1.1 connection: read a request, answer it, repeat while keep-alive.
#pragma once

#include "net.hpp"

#include <boost/asio/ip/tcp.hpp>

namespace ppgate {

class node_server;

// Spawned once per accepted connection; takes the socket by value.
net::awaitable<void> run_http_session(net::ip::tcp::socket socket, net::ip::address from,
                                      node_server& server);

}  // namespace ppgate
