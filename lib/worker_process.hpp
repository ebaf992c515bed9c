// One ppgate-worker child process: spawned with posix_spawn (never fork in a process that runs
// C++ afterwards), connected by a socketpair on the child's fd 3, supervised through a pidfd.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "net.hpp"

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <optional>
#include <string>
#include <sys/types.h>

namespace ppgate {

class worker_process {
 public:
  // Starts `binary --fd 3`. Throws std::system_error when the process cannot be started.
  worker_process(net::any_io_executor ex, const std::string& binary);
  ~worker_process();  // kills and reaps the child if it is still there
  worker_process(const worker_process&) = delete;
  worker_process& operator=(const worker_process&) = delete;

  pid_t pid() const { return pid_; }
  net::local::stream_protocol::socket& socket() { return socket_; }

  void kill();  // SIGKILL; the socket then reads EOF

  // Waits until the child has exited and reaps it. Returns a description such as
  // "exited with status 3" or "was killed by signal 11 (SIGSEGV)".
  net::awaitable<std::string> wait_exit();

  // Blocking reap after kill(), for shutdown.
  void kill_and_reap();

  static std::string describe_status(int status);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  net::local::stream_protocol::socket socket_;
  net::posix::stream_descriptor pidfd_;
};

}  // namespace ppgate
