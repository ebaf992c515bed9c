#include "worker_memory.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>

namespace ppgate {

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool has_word(const std::string& text, std::string_view word) {
  std::istringstream in(text);
  std::string w;
  while (in >> w)
    if (w == word) return true;
  return false;
}

// One write(2) of `text` to a cgroup file; 0 or the errno.
int write_file(const fs::path& file, std::string_view text) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = n == static_cast<ssize_t>(text.size()) ? 0 : (n < 0 ? errno : EIO);
  ::close(fd);
  return err;
}

std::string describe(int err) { return std::strerror(err); }

}  // namespace

std::unique_ptr<worker_cgroups> worker_cgroups::prepare(std::string& why_not) {
  // "0::/some/path" is the process's cgroup v2 membership.
  std::istringstream membership(read_text("/proc/self/cgroup"));
  std::string line, own;
  while (std::getline(membership, line))
    if (line.starts_with("0::")) own = line.substr(3);
  // mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPER"
  std::istringstream mounts(read_text("/proc/self/mountinfo"));
  std::string mountpoint;
  while (std::getline(mounts, line)) {
    const auto dash = line.find(" - ");
    if (dash == std::string::npos || line.compare(dash + 3, 8, "cgroup2 ") != 0) continue;
    std::istringstream fields(line.substr(0, dash));
    std::string id, parent, dev, root;
    fields >> id >> parent >> dev >> root >> mountpoint;
    break;
  }
  if (own.empty() || mountpoint.empty()) {
    why_not = "this system has no cgroup v2 hierarchy";
    return nullptr;
  }
  return prepare_at(fs::path(mountpoint) / fs::path(own).relative_path(), ::getpid(), why_not);
}

std::unique_ptr<worker_cgroups> worker_cgroups::prepare_at(const fs::path& dir, pid_t self,
                                                           std::string& why_not) {
  if (!has_word(read_text(dir / "cgroup.controllers"), "memory")) {
    why_not = "the memory controller is not delegated to cgroup " + dir.string();
    return nullptr;
  }
  if (has_word(read_text(dir / "cgroup.subtree_control"), "memory"))
    return std::unique_ptr<worker_cgroups>(new worker_cgroups(dir));
  int err = write_file(dir / "cgroup.subtree_control", "+memory");
  if (err == EBUSY) {
    // The node's cgroup holds processes (the node at least): a cgroup v2 with processes of its
    // own gives no controllers to its children. The node moves to a leaf of its own first.
    const fs::path leaf = dir / "ppgate-node";
    if (::mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
      why_not = "cannot create cgroup " + leaf.string() + ": " + describe(errno);
      return nullptr;
    }
    if ((err = write_file(leaf / "cgroup.procs", std::to_string(self))) != 0) {
      why_not = "cannot move the node into cgroup " + leaf.string() + ": " + describe(err);
      return nullptr;
    }
    err = write_file(dir / "cgroup.subtree_control", "+memory");
  }
  if (err != 0) {
    why_not = "cannot enable the memory controller in cgroup " + dir.string() + ": " + describe(err);
    return nullptr;
  }
  return std::unique_ptr<worker_cgroups>(new worker_cgroups(dir));
}

worker_cgroup::worker_cgroup(const worker_cgroups& parent, const std::string& name, std::uint64_t limit_bytes)
    : dir_(parent.dir() / name) {
  if (::mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST)
    throw std::system_error(errno, std::generic_category(), "cannot create cgroup " + dir_.string());
  if (const int err = write_file(dir_ / "memory.max", std::to_string(limit_bytes)); err != 0) {
    ::rmdir(dir_.c_str());
    throw std::system_error(err, std::generic_category(), "cannot set memory.max in " + dir_.string());
  }
  // Best effort: no swapping past the limit, and the worker's children go with it.
  write_file(dir_ / "memory.swap.max", "0");
  write_file(dir_ / "memory.oom.group", "1");
}

worker_cgroup::~worker_cgroup() {
  // Empty once its last worker was reaped; a real cgroup directory is removed with rmdir alone.
  if (::rmdir(dir_.c_str()) != 0 && errno == ENOTEMPTY) {
    // A plain directory standing in for one (tests): its files go first.
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

bool worker_cgroup::add(pid_t pid) const {
  const int err = write_file(dir_ / "cgroup.procs", std::to_string(pid));
  errno = err;
  return err == 0;
}

std::uint64_t worker_cgroup::oom_kills() const {
  std::istringstream events(read_text(dir_ / "memory.events"));
  std::string key;
  std::uint64_t value = 0;
  while (events >> key >> value)
    if (key == "oom_kill") return value;
  return 0;
}

}  // namespace ppgate
