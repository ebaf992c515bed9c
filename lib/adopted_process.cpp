#include "adopted_process.hpp"

#include "log.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <poll.h>
#include <string_view>
#include <sys/socket.h>
#include <unistd.h>

namespace ppgate {

bool is_unix_stream_socket(int fd) {
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) return false;
  len = sizeof type;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

namespace {

// "123 456" -> {123, 456}; false on anything but whole numbers from 2 separated by spaces.
bool parse_pids(std::string_view text, std::vector<pid_t>& pids) {
  while (!text.empty()) {
    if (text.front() == ' ') {
      text.remove_prefix(1);
      continue;
    }
    pid_t pid = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), pid);
    if (ec != std::errc() || pid < 2 || (end != text.data() + text.size() && *end != ' ')) return false;
    pids.push_back(pid);
    text.remove_prefix(static_cast<std::size_t>(end - text.data()));
  }
  return true;
}

}  // namespace

std::vector<adopted_process> receive_adopted_workers(int channel, std::chrono::milliseconds bound) {
  pollfd waiting{channel, POLLIN, 0};
  int ready = 0;
  do ready = ::poll(&waiting, 1, static_cast<int>(bound.count()));
  while (ready < 0 && errno == EINTR);
  if (ready <= 0) {
    ::close(channel);
    log::warn("--adopt-from: no workers came within ", bound.count() / 1000.0,
              " s; the slots start workers of their own");
    return {};
  }

  char text[4096];  // max_adopted_workers pids of at most 10 digits and a space each
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_adopted_workers)];
  iovec data{text, sizeof text};
  msghdr message{};
  message.msg_iov = &data;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  ssize_t got = 0;
  do got = ::recvmsg(channel, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);  // none inherits them
  while (got < 0 && errno == EINTR);
  const int err = errno;
  ::close(channel);

  std::vector<int> fds;
  if (got >= 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
  }
  std::vector<pid_t> pids;
  const char* problem = nullptr;
  if (got < 0)
    problem = std::strerror(err);
  else if ((message.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0)
    problem = "more than fits one message";
  else if (!parse_pids(std::string_view(text, static_cast<std::size_t>(got)), pids))
    problem = "the pids are not whole numbers separated by spaces";
  else if (pids.size() != fds.size())
    problem = "not one pid for each socket";
  for (int fd : fds)
    if (problem == nullptr && !is_unix_stream_socket(fd)) problem = "a descriptor is not a Unix stream socket";
  if (problem != nullptr) {
    for (int fd : fds) ::close(fd);
    log::warn("--adopt-from: ", problem, "; no worker adopted, the slots start workers of their own");
    return {};
  }
  std::vector<adopted_process> workers;
  for (std::size_t i = 0; i < fds.size(); ++i) workers.push_back(adopted_process{fds[i], pids[i]});
  return workers;
}

}  // namespace ppgate
