// Workers the node did not start (--adopt-from FD): the Python client starts its private node,
// then forks itself into one worker per slot while the node starts up, so the first jobs wait
// for no interpreter to start (docs/architecture.md, "Start-up"). Kept apart from
// worker_process.hpp so that the command line's parser needs no Asio.
#pragma once

#include <chrono>
#include <sys/types.h>
#include <vector>

namespace ppgate {

struct adopted_process {
  int socket_fd = -1;  // the node's end of the worker's link, a Unix stream socket
  pid_t pid = 0;       // the worker; a child of the caller, which reaps it
};

// The most workers one message can carry (the kernel's SCM_MAX_FD).
inline constexpr std::size_t max_adopted_workers = 253;

// Whether `fd` is an open Unix stream socket.
bool is_unix_stream_socket(int fd);

// Reads the caller's forked workers from `channel`, a Unix stream socket, and closes it. The
// caller sends one message: the workers' sockets as SCM_RIGHTS, the pids in the same order as
// decimal text separated by spaces; then it closes its end (closing it with nothing sent means
// no workers). Waits at most `bound`. Anything malformed is logged and adopts no worker: the
// slots then start workers of their own.
std::vector<adopted_process> receive_adopted_workers(int channel, std::chrono::milliseconds bound);

}  // namespace ppgate
