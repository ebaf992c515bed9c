#include "worker_process.hpp"

#include <boost/asio/local/connect_pair.hpp>

#include <cerrno>
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

worker_process::worker_process(net::any_io_executor ex, const std::string& binary)
    : socket_(ex), pidfd_(ex) {
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
  std::string bin = binary;
  char* argv[] = {bin.data(), fd_flag, fd_arg, nullptr};
  const int rc = ::posix_spawn(&pid_, binary.c_str(), &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(child_fd);
  if (rc != 0) {
    ::close(fds[0]);
    throw_errno(rc, ("cannot start worker " + binary).c_str());
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
}

worker_process::~worker_process() {
  if (!reaped_) kill_and_reap();
}

void worker_process::kill() {
  if (!reaped_) ::kill(pid_, SIGKILL);
}

void worker_process::kill_and_reap() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

net::awaitable<std::string> worker_process::wait_exit() {
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      co_return describe_status(status);
    }
    if (r < 0 && errno != EINTR) {
      reaped_ = true;
      co_return "vanished (" + std::string(std::strerror(errno)) + ")";
    }
    // The pidfd turns readable when the child exits.
    auto [ec] = co_await pidfd_.async_wait(net::posix::descriptor_base::wait_read,
                                           use_nothrow_awaitable);
    if (ec == net::error::operation_aborted) co_return "was stopped";
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

}  // namespace ppgate
