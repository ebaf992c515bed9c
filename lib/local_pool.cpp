#include "local_pool.hpp"

#include <algorithm>
#include <sched.h>

namespace ppgate {

local_pool::local_pool(net::any_io_executor ex, scheduler& sched, worker_options opts)
    : ex_(std::move(ex)), sched_(sched), opts_(std::move(opts)) {
  sched_.register_node(*this);
}

local_pool::~local_pool() { shutdown(); }

void local_pool::resize(std::size_t count) {
  while (links_.size() < count) {
    auto link = std::make_shared<worker_link>(ex_, sched_, *this, opts_);
    links_.push_back(link);
    link->launch();
  }
  while (links_.size() > count) {
    // Prefer a link that is not running a job, so shrinking does not wait on long jobs.
    auto victim = std::find_if(links_.begin(), links_.end(),
                               [](const auto& l) { return l->info().state != "busy"; });
    if (victim == links_.end()) victim = links_.end() - 1;
    auto link = *victim;
    links_.erase(victim);
    retiring_.push_back(link);
    link->retire();
  }
}

std::vector<worker_info> local_pool::workers() const {
  std::vector<worker_info> out;
  out.reserve(links_.size());
  for (const auto& l : links_) out.push_back(l->info());
  return out;
}

void local_pool::shutdown() {
  for (auto& l : links_) l->stop_now();
  for (auto& l : retiring_) l->stop_now();
}

void local_pool::on_link_ended(worker_link& link) {
  std::erase_if(retiring_, [&](const auto& l) { return l.get() == &link; });
  std::erase_if(links_, [&](const auto& l) { return l.get() == &link; });
}

std::size_t local_pool::usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

}  // namespace ppgate
