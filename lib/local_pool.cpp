#include "local_pool.hpp"

#include "log.hpp"

#include <algorithm>
#include <sched.h>

namespace ppgate {

local_pool::local_pool(net::any_io_executor ex, scheduler& sched, worker_options opts)
    : ex_(std::move(ex)), sched_(sched), opts_(std::move(opts)) {
  sched_.register_node(*this);
}

local_pool::~local_pool() { shutdown(); }

void local_pool::adopt(const std::vector<adopted_process>& workers) {
  for (const adopted_process& w : workers) {
    try {
      adopted_.push_back(std::make_unique<worker_process>(ex_, w));
    } catch (const std::system_error& e) {
      log::warn(e.what(), "; its slot starts a worker of its own");
    }
  }
}

void local_pool::resize(std::size_t count) {
  std::size_t next_adopted = 0;
  while (slots_.size() < count) {
    auto slot = std::make_shared<worker_slot>(ex_, sched_, *this, opts_);
    slots_.push_back(slot);
    slot->launch(next_adopted < adopted_.size() ? std::move(adopted_[next_adopted++]) : nullptr);
  }
  adopted_.clear();  // more than there are slots: stopped
  while (slots_.size() > count) {
    // Prefer a slot that is not running a job, so shrinking does not wait on long jobs.
    auto victim = std::find_if(slots_.begin(), slots_.end(),
                               [](const auto& l) { return l->info().state != worker_state::busy; });
    if (victim == slots_.end()) victim = slots_.end() - 1;
    auto slot = *victim;
    slots_.erase(victim);
    retiring_.push_back(slot);
    slot->retire();
  }
}

std::vector<worker_info> local_pool::workers() const {
  std::vector<worker_info> out;
  out.reserve(slots_.size());
  for (const auto& l : slots_) out.push_back(l->info());
  return out;
}

void local_pool::shutdown() {
  for (auto& l : slots_) l->stop_now();
  for (auto& l : retiring_) l->stop_now();
}

void local_pool::on_slot_ended(worker_slot& slot) {
  std::erase_if(retiring_, [&](const auto& l) { return l.get() == &slot; });
  std::erase_if(slots_, [&](const auto& l) { return l.get() == &slot; });
}

std::size_t local_pool::usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

}  // namespace ppgate
