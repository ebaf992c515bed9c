// One HTTP/1.1 connection: read a request, answer it, repeat while keep-alive; or hand the
// connection to a job session (/v1/session) or an event stream (/v1/events).
#pragma once

#include "activity.hpp"
#include "connection_tracker.hpp"
#include "http.hpp"
#include "net.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <memory>

namespace ppgate {

class event_hub;
class rest_api;
class scheduler;

// What an HTTP connection uses, borrowed from the node, which outlives every session's work.
struct http_services {
  rest_api& api;
  scheduler& sched;    // for job sessions
  event_hub& events;   // for event streams
  http_limits limits;
  std::shared_ptr<ppgate::activity> seen;  // client activity
};

// Spawned once per accepted connection; takes everything by value.
net::awaitable<void> run_http_session(net::ip::tcp::socket socket, net::ip::address from,
                                      std::shared_ptr<connection_tracker> connections, http_services services);

}  // namespace ppgate
