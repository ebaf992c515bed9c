#include "worker_process.hpp"

#include "held_replies.hpp"

#include <boost/asio/local/connect_pair.hpp>

#include <simdjson.h>

#include <cerrno>
#include <poll.h>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>

extern char** environ;

namespace ppgate {

namespace {

[[noreturn]] void throw_errno(int err, const char* what) {
  throw std::system_error(err, std::generic_category(), what);
}

}  // namespace

worker_process::worker_process(net::any_io_executor ex, const worker_command& command)
    : socket_(ex), pidfd_(ex), exit_event_(ex, net::steady_timer::time_point::max()) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    throw_errno(errno, "socketpair");
  int child_fd = fds[1];
  // dup2(3, 3) would keep FD_CLOEXEC set, so never hand the child an fd that already is 3.
  if (child_fd == 3) {
    child_fd = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 4);
    ::close(fds[1]);
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, child_fd, 3);
  // Nothing else of ours (listening sockets, other workers' links) leaks into the worker.
  posix_spawn_file_actions_addclosefrom_np(&actions, 4);

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t no_signals, default_signals;
  sigemptyset(&no_signals);
  // Blocked until the worker can answer it (it unblocks it then): a probe sent before stays
  // pending, where the signal's default action would have ended the process.
  sigaddset(&no_signals, worker_probe_signal());
  sigemptyset(&default_signals);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1, SIGPIPE, SIGHUP}) sigaddset(&default_signals, sig);
  posix_spawnattr_setsigmask(&attr, &no_signals);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  // Its own process group: a Ctrl-C at the terminal reaches the gateway, which stops the workers.
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);

  char fd_arg[] = "3";
  char fd_flag[] = "--fd";
  char node_flag[] = "--node-pid";
  std::string node_pid = std::to_string(::getpid());
  std::string python = command.python, script = command.script;
  std::vector<std::string> extra = command.extra_args;
  std::vector<char*> argv = {python.data(), script.data(), fd_flag, fd_arg, node_flag, node_pid.data()};
  for (std::string& arg : extra) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const int rc = ::posix_spawn(&pid_, python.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(child_fd);
  if (rc != 0) {
    ::close(fds[0]);
    throw_errno(rc, ("cannot start a worker with " + python).c_str());
  }

  // glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++, so call the system call directly.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    throw_errno(err, "pidfd_open");
  }
  pidfd_.assign(pidfd);
  socket_.assign(net::local::stream_protocol(), fds[0]);
  watch_exit();
}

worker_process::worker_process(net::any_io_executor ex, adopted_process adopted)
    : pid_(adopted.pid),
      adopted_(true),
      socket_(ex),
      pidfd_(ex),
      exit_event_(ex, net::steady_timer::time_point::max()) {
  // The caller has not reaped it (it waits for this node to end first), so the pid is still its.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd < 0) {
    const int err = errno;
    ::close(adopted.socket_fd);
    throw_errno(err, ("--adopt-from: process " + std::to_string(pid_) + " is gone").c_str());
  }
  ::fcntl(adopted.socket_fd, F_SETFD, FD_CLOEXEC);  // no worker this node starts inherits it
  pidfd_.assign(pidfd);
  socket_.assign(net::local::stream_protocol(), adopted.socket_fd);
  watch_exit();
}

worker_process::~worker_process() {
  watch_->owner_gone = true;
  if (!reaped_) kill_and_reap();
}

void worker_process::watch_exit() {
  pidfd_.async_wait(net::posix::descriptor_base::wait_read,
                    [this, watch = watch_](boost::system::error_code ec) {
                      if (ec || watch->owner_gone) return;
                      // A wait can complete without the pidfd being readable (Asio reuses a
                      // closed descriptor's reactor state, and with it an event still queued for
                      // the previous worker's pidfd): ask the pidfd itself.
                      pollfd p{pidfd_.native_handle(), POLLIN, 0};
                      if (::poll(&p, 1, 0) != 1 || (p.revents & POLLIN) == 0) {
                        watch_exit();
                        return;
                      }
                      watch->exited = true;
                      // Our end stops reading once what is queued has been read: the link's
                      // reader gets the worker's last replies, then EOF.
                      ::shutdown(socket_.native_handle(), SHUT_RD);
                      exit_event_.cancel();
                    });
}

bool worker_process::alive() {
  pollfd p{pidfd_.native_handle(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

void worker_process::kill() {
  if (adopted_) {
    // Its parent may reap it as soon as it has exited, and its pid then goes to another
    // process: signal the group (its own, from setsid()) only while it lives, the process
    // itself through its pidfd.
    if (!reaped_ && alive()) {
      ::kill(-pid_, SIGKILL);
      ::syscall(SYS_pidfd_send_signal, pidfd_.native_handle(), SIGKILL, nullptr, 0);
    }
    return;
  }
  // The group is the worker's own (setpgroup above); while it has members its id is not reused.
  if (!reaped_) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);  // in case the worker left its group
  }
}

void worker_process::kill_and_reap() {
  if (reaped_) return;
  kill();
  if (adopted_) {
    pollfd p{pidfd_.native_handle(), POLLIN, 0};
    while (::poll(&p, 1, 2000) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return;
  }
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

net::awaitable<std::string> worker_process::wait_exit() {
  if (adopted_) {
    auto watch = watch_;
    while (!watch->exited) {
      co_await exit_event_.async_wait(use_nothrow_awaitable);  // cancelled by watch_exit()
      if (watch->owner_gone) co_return "was stopped";
    }
    reaped_ = true;
    co_return "exited";  // its status is for its parent, the client, to collect
  }
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      // What the worker's jobs left in its process group goes with it. The id is not reused while
      // the group has members, so this reaches only them.
      ::kill(-pid_, SIGKILL);
      co_return describe_status(status);
    }
    if (r < 0 && errno != EINTR) {
      reaped_ = true;
      co_return "vanished (" + std::string(std::strerror(errno)) + ")";
    }
    if (watch_->exited) {
      // Exited but not yet reapable: cannot happen on Linux (the zombie exists before the pidfd
      // turns readable); poll rather than wait for an event that has been.
      net::steady_timer pause(socket_.get_executor(), std::chrono::milliseconds(5));
      co_await pause.async_wait(use_nothrow_awaitable);
      continue;
    }
    auto watch = watch_;
    co_await exit_event_.async_wait(use_nothrow_awaitable);  // cancelled by watch_exit()
    if (watch->owner_gone) co_return "was stopped";
  }
}

std::string worker_process::describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    return "was killed by signal " + std::to_string(sig) + " (SIG" +
           (abbrev != nullptr ? abbrev : "?") + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

python_info probe_python(const std::string& python, const std::string& script,
                         std::chrono::milliseconds limit) {
  const std::string what = "--python " + python + ": ";
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw_errno(errno, "pipe2");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, out[1], 2);
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  std::string py = python, path = script;
  char check[] = "--check";
  char* argv[] = {py.data(), path.data(), check, nullptr};
  pid_t pid = -1;
  // posix_spawnp looks a bare name up on PATH, as a shell would.
  const int rc = ::posix_spawnp(&pid, py.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  if (rc != 0) {
    ::close(out[0]);
    throw std::runtime_error(what + "cannot run it (" + std::strerror(rc) + ")");
  }

  // Read everything it prints, within the limit.
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      timed_out = ready == 0;
      break;
    }
    char buf[4096];
    const ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (text.size() < 64 * 1024) text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (timed_out)
    throw std::runtime_error(what + "no answer from `" + python + " " + script + " --check` within " +
                             std::to_string(limit.count()) + " ms");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    // A shell's "exec: not found" (127), an old Python's SyntaxError, a failed extension import:
    // the interpreter's own words say why.
    throw std::runtime_error(what + "it cannot run the ppgate worker (" + worker_process::describe_status(status) +
                             ")" + (text.empty() ? "" : ":\n" + text));
  }
  // The last line is the report: {"version": "3.12.1", "implementation": "CPython", "executable": "..."}
  const std::string_view report = std::string_view(text).substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  python_info info;
  std::string_view implementation;
  std::string_view version, executable;
  if (parser.parse(report.data(), report.size()).get(doc) || doc["version"].get(version) ||
      doc["executable"].get(executable) || doc["implementation"].get(implementation))
    throw std::runtime_error(what + "unexpected answer to --check: " + std::string(report));
  if (implementation != "CPython")
    throw std::runtime_error(what + "it is " + std::string(implementation) + "; workers need CPython 3.8 or later");
  info.version = version;
  // An interpreter that cannot tell its own path (embedded, odd installs) is run as given.
  info.executable = executable.empty() ? python : std::string(executable);
  return info;
}

}  // namespace ppgate
