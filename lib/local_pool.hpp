// The local node: a pool of worker_slots, one per slot, resizable at run time both ways.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "scheduler.hpp"
#include "worker_slot.hpp"

#include <memory>
#include <string>
#include <vector>

namespace ppgate {

class local_pool : public node {
 public:
  local_pool(net::any_io_executor ex, scheduler& sched, worker_options opts);
  ~local_pool() override;

  const std::string& name() const override { return name_; }
  std::size_t slot_count() const override { return slots_.size(); }
  const std::string& python_version() const override { return opts_.python_version; }

  // Workers the caller started (--adopt-from), taken over now: the next resize() gives one to
  // each slot it creates, and stops those left over. One that is gone already is skipped.
  void adopt(const std::vector<adopted_process>& workers);

  // Grows by starting workers; shrinks by retiring idle workers first, then busy ones after their
  // current job.
  void resize(std::size_t count);
  std::size_t size() const { return slots_.size(); }
  std::vector<worker_info> workers() const;

  // Kills and reaps every worker process, retiring ones included. Synchronous.
  void shutdown();

  void on_slot_ended(worker_slot& slot);  // called by a slot whose supervision has ended

  // The number of CPUs this process may run on (sched_getaffinity), at least 1.
  static std::size_t usable_cpus();

 private:
  net::any_io_executor ex_;
  scheduler& sched_;
  worker_options opts_;
  std::string name_ = "local";
  std::vector<std::shared_ptr<worker_slot>> slots_;     // serving slots
  std::vector<std::shared_ptr<worker_slot>> retiring_;  // leaving; kept until reaped
  std::vector<std::unique_ptr<worker_process>> adopted_;  // for the slots the next resize() makes
};

}  // namespace ppgate
