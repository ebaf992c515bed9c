// A worker the node did not start (--adopt-worker FD:PID): the Python client forks itself into
// one per slot before it starts its private node, so the first jobs wait for no interpreter to
// start (docs/architecture.md, "Start-up"). Kept apart from worker_process.hpp so that the
// command line's parser needs no Asio.
#pragma once

#include <sys/types.h>

namespace ppgate {

struct adopted_process {
  int socket_fd = -1;  // the node's end of the worker's link, a Unix stream socket
  pid_t pid = 0;       // the worker; a child of the caller, which reaps it
};

}  // namespace ppgate
