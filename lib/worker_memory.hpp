// --max-worker-memory: how a worker's memory is capped while a job runs (docs/cli.md).
//
// Where the node may create cgroups (cgroup v2 with the memory controller delegated to it, as
// systemd's Delegate=yes gives a service), each slot's worker runs in a cgroup of its own whose
// memory.max is the limit: the kernel kills a worker that crosses it, and the slot tells a memory
// kill from any other death by the cgroup's oom_kill count. Elsewhere the worker caps itself with
// RLIMIT_AS (ppgate_worker_runtime.py): before each job the address space may grow by what the
// limit leaves its resident memory, so an allocation past it fails with MemoryError. In both
// modes a worker whose resident memory is over the limit after a job is replaced.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <sys/types.h>

namespace ppgate {

// The cgroup under which the node puts its workers' cgroups: a cgroup v2 directory with the
// memory controller enabled for its children.
class worker_cgroups {
 public:
  // Finds the node's own cgroup v2 directory (from /proc/self/cgroup and /proc/self/mountinfo)
  // and prepares it: the memory controller enabled for its children, the node itself moved to a
  // leaf "ppgate-node" first when its cgroup holds processes (cgroup v2 allows controllers only
  // on cgroups without processes of their own). Returns null, with `why_not` set, when that is
  // not possible here (cgroup v1, no memory controller, no permission).
  static std::unique_ptr<worker_cgroups> prepare(std::string& why_not);
  // The same, on the cgroup directory `dir` (tests point it at a directory of their own).
  static std::unique_ptr<worker_cgroups> prepare_at(const std::filesystem::path& dir, pid_t self,
                                                    std::string& why_not);

  const std::filesystem::path& dir() const { return dir_; }

 private:
  explicit worker_cgroups(std::filesystem::path dir) : dir_(std::move(dir)) {}
  std::filesystem::path dir_;
};

// One slot's cgroup: created with the limit, removed (once empty) when the slot ends.
class worker_cgroup {
 public:
  // Throws std::system_error when it cannot be created.
  worker_cgroup(const worker_cgroups& parent, const std::string& name, std::uint64_t limit_bytes);
  ~worker_cgroup();
  worker_cgroup(const worker_cgroup&) = delete;
  worker_cgroup& operator=(const worker_cgroup&) = delete;

  // Moves the process into this cgroup. False (with errno) when the kernel refuses.
  bool add(pid_t pid) const;
  // How many times the kernel's OOM killer killed a process here (memory.events, oom_kill).
  std::uint64_t oom_kills() const;

 private:
  std::filesystem::path dir_;
};

}  // namespace ppgate
