// Signs of client activity, for --idle-exit (the last request or connection) and --busy-poll (the
// last results sent to a job session). Shared through shared_ptr by the listener and the sessions:
// a session's frame, destroyed with the io_context after the node_server, still holds it safely.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "job.hpp"

namespace ppgate {

struct activity {
  steady_clock::time_point last_seen = steady_clock::now();
  steady_clock::time_point last_session_reply{};

  void touch() { last_seen = steady_clock::now(); }
  void session_replied() { last_session_reply = steady_clock::now(); }
};

}  // namespace ppgate
