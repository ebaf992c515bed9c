// One worker child process, `<python> ppgate_worker.py --fd 3 --node-pid P`: spawned with posix_spawn
// (never fork in a process that runs C++ afterwards), in a process group of its own, connected by a
// socketpair on the child's fd 3, supervised through a pidfd. Or one the node adopts
// (--adopt-from): a process its caller started, connected the same way, supervised by pidfd only.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "adopted_process.hpp"
#include "net.hpp"

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <sys/types.h>

namespace ppgate {

// How a worker is started: the interpreter jobs run on, and the worker's bootstrap script
// (worker/ppgate_worker.py, with the loop's extension module and the runtime beside it).
struct worker_command {
  std::string python;  // an absolute path, as probe_python resolved it
  std::string script;
  std::vector<std::string> extra_args;  // after the fd and node pid: --max-memory N, ...
};

// What probe_python learnt of an interpreter.
struct python_info {
  std::string executable;  // its sys.executable: the path workers are started with
  std::string version;     // platform.python_version(), e.g. "3.12.1"
};

// Runs `python script --check` (python is looked up on PATH when it has no slash) and returns
// what it reports. Throws std::runtime_error saying why when that interpreter cannot run the
// worker: not found, not a CPython 3.8+, the extension module does not load, no answer in time.
python_info probe_python(const std::string& python, const std::string& script,
                         std::chrono::milliseconds limit = std::chrono::seconds(30));

class worker_process {
 public:
  // Starts `python script --fd 3 --node-pid <this process>`. Throws std::system_error when the process cannot be started.
  worker_process(net::any_io_executor ex, const worker_command& command);
  // Takes over an adopted worker and its socket. Not this process's child: its exit is seen
  // through the pidfd, and its exit status goes to its parent. Throws std::system_error when
  // the process is gone.
  worker_process(net::any_io_executor ex, adopted_process adopted);
  ~worker_process();  // kills and reaps the child if it is still there
  worker_process(const worker_process&) = delete;
  worker_process& operator=(const worker_process&) = delete;

  pid_t pid() const { return pid_; }
  net::local::stream_protocol::socket& socket() { return socket_; }

  // SIGKILL to the worker's whole process group (whatever its jobs started goes with it); the
  // socket then reads EOF.
  void kill();

  // When the worker exits, the socket reads what it had written and then EOF, even while a
  // process its job started (and that left the group) still holds the other end open.

  // Waits until the child has exited and reaps it. Returns a description such as
  // "exited with status 3" or "was killed by signal 11 (SIGSEGV)".
  net::awaitable<std::string> wait_exit();

  // Blocking reap after kill(), for shutdown.
  void kill_and_reap();

  static std::string describe_status(int status);

 private:
  void watch_exit();

  bool alive();  // an adopted process: its pidfd is not readable yet

  pid_t pid_ = -1;
  bool adopted_ = false;
  bool reaped_ = false;  // an adopted process: seen to exit
  net::local::stream_protocol::socket socket_;
  // The pidfd has exactly one wait on it, for the life of the process (armed in the constructor):
  // it turns readable once, and Asio waits on it edge-triggered, so a second or later wait could
  // miss that edge. wait_exit() waits on exit_event_ instead, a timer cancelled on the exit.
  net::posix::stream_descriptor pidfd_;
  net::steady_timer exit_event_;
  struct exit_watch {
    bool exited = false;
    bool owner_gone = false;  // the handler may run after this object is destroyed
  };
  std::shared_ptr<exit_watch> watch_ = std::make_shared<exit_watch>();
};

}  // namespace ppgate
