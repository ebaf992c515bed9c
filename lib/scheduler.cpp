#include "scheduler.hpp"

#include <algorithm>
#include <chrono>

namespace ppgate {

std::string_view to_string(restart_reason r) {
  switch (r) {
    case restart_reason::died: return "died";
    case restart_reason::timeout: return "timeout";
    case restart_reason::cancelled: return "cancelled";
    case restart_reason::max_jobs: return "max_jobs";
    case restart_reason::memory: return "memory";
    case restart_reason::job_state: return "job_state";
    case restart_reason::protocol: return "protocol";
  }
  return "unknown";
}

namespace {

constexpr std::size_t kept_failures = 20;
constexpr std::size_t max_failure_outcome = 64 * 1024;

}  // namespace

void latency_histogram::add(double seconds) {
  std::size_t i = 0;
  while (i < bounds.size() && seconds > bounds[i]) ++i;
  ++counts[i];
  ++count;
  sum += seconds;
}

double latency_histogram::quantile_since(const latency_histogram& since, double q) const {
  const std::uint64_t n = count - since.count;
  if (n == 0) return 0;
  const double target = q * static_cast<double>(n);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    const std::uint64_t in_bucket = counts[i] - since.counts[i];
    if (in_bucket == 0) continue;
    if (static_cast<double>(seen + in_bucket) >= target) {
      // Linear interpolation inside the bucket; the +Inf bucket reports its lower bound.
      const double lower = i == 0 ? 0 : bounds[i - 1];
      if (i == bounds.size()) return lower;
      const double fraction = (target - static_cast<double>(seen)) / static_cast<double>(in_bucket);
      return lower + fraction * (bounds[i] - lower);
    }
    seen += in_bucket;
  }
  return bounds.back();
}

scheduler::scheduler(options opts) : opts_(opts) {}

std::shared_ptr<const function_def> scheduler::intern(function_def def) {
  auto& known = functions_[def.hash];
  if (auto existing = known.lock()) return existing;
  auto fresh = std::make_shared<const function_def>(std::move(def));
  known = fresh;
  // Forget functions no job refers to any more, now and then, so the table tracks live ones.
  if (functions_.size() > 4096) std::erase_if(functions_, [](auto& kv) { return kv.second.expired(); });
  return fresh;
}

job& scheduler::submit(job_spec spec) {
  auto owned = std::make_unique<job>();
  job& j = *owned;
  if (spec.requested_id != 0) {
    j.id = spec.requested_id;
  } else {
    // Past 2^32 jobs the node's ids reach the range submitters choose from: skip one taken.
    while (jobs_.contains(next_id_)) ++next_id_;
    j.id = next_id_++;
  }
  j.seq = next_seq_++;
  j.spec = std::move(spec);
  j.submitted = steady_clock::now();
  jobs_.emplace(j.id, std::move(owned));
  ++counters_.submitted;
  ++counters_.queued;
  enqueue(j, false);
  if (recorder_ != nullptr) recorder_->job_submitted(j);
  if (events_ != nullptr) events_->on_job_event(j, job_event::queued);
  dispatch_to_waiting_slot();
  return j;
}

void scheduler::dispatch_to_waiting_slot() {
  if (!idle_.empty()) {
    // Local slots first, as pp does; a peer's slot takes what may leave this node.
    auto it = std::find_if(idle_.begin(), idle_.end(), [](slot* s) { return !s->owner().remote(); });
    if (it == idle_.end()) {
      job* next = peek_next_queued();
      if (next == nullptr || next->spec.local_only) return;
      it = idle_.begin();
    }
    slot* s = *it;
    idle_.erase(it);
    if (job* next = pop_next_queued(s->owner().remote())) dispatch(*s, *next);
    return;
  }
  if (!prefetching_.empty()) {
    job* next = peek_next_queued();
    if (next == nullptr) return;
    for (auto it = prefetching_.begin(); it != prefetching_.end(); ++it) {
      if (prefetchable(*next, it->budget)) {
        slot* s = it->s;
        prefetching_.erase(it);
        dispatch(*s, *pop_next_queued());
        return;
      }
    }
  }
}

bool scheduler::prefetchable(const job& j, double budget) {
  const function_def& f = *j.spec.function;
  return !j.spec.timeout && !j.run_alone && f.runs > 0 && f.mean_run_seconds < budget;
}

std::string scheduler::ids_taken(const std::vector<job_spec>& specs) const {
  const auto in_use = [](std::uint64_t id) { return "job id " + std::to_string(id) + " is already in use"; };
  std::vector<std::uint64_t> chosen;
  chosen.reserve(specs.size());
  for (const auto& s : specs) {
    if (s.requested_id == 0) continue;
    if (jobs_.contains(s.requested_id)) return in_use(s.requested_id);
    chosen.push_back(s.requested_id);
  }
  // Twice in one batch: sorted, not searched for each (a batch holds up to thousands of jobs).
  std::sort(chosen.begin(), chosen.end());
  if (const auto twice = std::adjacent_find(chosen.begin(), chosen.end()); twice != chosen.end())
    return in_use(*twice);
  return {};
}

std::vector<const job*> scheduler::list(const listing_filter& f) const {
  std::vector<const job*> out;
  for (const auto& [id, j] : jobs_) {
    if (j->seq <= f.after) continue;
    if (f.group && j->spec.group != *f.group) continue;
    if (f.state && j->state != *f.state) continue;
    out.push_back(j.get());
  }
  const auto by_seq = [](const job* a, const job* b) { return a->seq < b->seq; };
  if (out.size() > f.limit) {
    std::nth_element(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(f.limit), out.end(), by_seq);
    out.resize(f.limit);
  }
  std::sort(out.begin(), out.end(), by_seq);
  return out;
}

job* scheduler::find(std::uint64_t id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

void scheduler::enqueue(job& j, bool at_front) {
  auto& line = queue_[j.spec.priority];
  if (at_front) line.push_front(j.id);
  else line.push_back(j.id);
}

job* scheduler::peek_next_queued() {
  // Drop the ids of jobs cancelled while queued, so the head is a real queued job.
  for (auto bucket = queue_.begin(); bucket != queue_.end();) {
    auto& line = bucket->second;
    while (!line.empty()) {
      job* j = find(line.front());
      if (j != nullptr && j->state == job_state::queued) return j;
      line.pop_front();
    }
    bucket = bucket->first == 0 ? std::next(bucket) : queue_.erase(bucket);
  }
  return nullptr;
}

job* scheduler::pop_next_queued(bool for_remote) {
  job* next = peek_next_queued();
  if (next == nullptr) return nullptr;
  if (!for_remote || !next->spec.local_only) {
    queue_[next->spec.priority].pop_front();
    return next;
  }
  // A peer's slot skips jobs that must stay here and takes the first one that may leave.
  for (auto& [priority, line] : queue_) {
    for (auto it = line.begin(); it != line.end(); ++it) {
      job* candidate = find(*it);
      if (candidate != nullptr && candidate->state == job_state::queued && !candidate->spec.local_only) {
        line.erase(it);
        return candidate;
      }
    }
  }
  return nullptr;
}

void scheduler::dispatch(slot& s, job& j) {
  --counters_.queued;
  ++counters_.running;
  j.state = job_state::running;
  j.running_on = &s;
  j.started = steady_clock::now();
  j.node = s.owner().name();
  ++j.attempts;
  if (recorder_ != nullptr) recorder_->job_changed(j);
  if (events_ != nullptr) events_->on_job_event(j, job_event::started);
  s.start(j);
}

void scheduler::slot_ready(slot& s) {
  std::erase_if(prefetching_, [&](const prefetch_offer& o) { return o.s == &s; });
  if (job* j = pop_next_queued(s.owner().remote())) {
    dispatch(s, *j);
    return;
  }
  if (std::find(idle_.begin(), idle_.end(), &s) == idle_.end()) idle_.push_back(&s);
}

void scheduler::slot_can_prefetch(slot& s, double budget) {
  std::erase_if(prefetching_, [&](const prefetch_offer& o) { return o.s == &s; });
  job* next = peek_next_queued();
  if (next != nullptr && prefetchable(*next, budget)) {
    dispatch(s, *pop_next_queued());
    return;
  }
  prefetching_.push_back({&s, budget});
}

void scheduler::slot_gone(slot& s) {
  std::erase(idle_, &s);
  std::erase_if(prefetching_, [&](const prefetch_offer& o) { return o.s == &s; });
}

scheduler::cancel_result scheduler::cancel(std::uint64_t id) {
  job* j = find(id);
  if (j == nullptr) return cancel_result::not_found;
  if (is_terminal(j->state)) return cancel_result::already_finished;
  if (j->state == job_state::running) {
    // The slot forgets the job (stopping its worker if it had started); it will not report it again.
    j->running_on->abort(*j);
  }
  finish(*j, job_state::cancelled, error_outcome("Cancelled", "the job was cancelled by request"), 0);
  return cancel_result::cancelled;
}

bool scheduler::hand_back(std::uint64_t id, std::string_view why) {
  job* j = find(id);
  if (j == nullptr || j->state != job_state::queued) return false;
  finish(*j, job_state::cancelled, error_outcome("HandedBack", why), 0);
  return true;
}

std::size_t scheduler::lose_unfinished(std::string_view why, bool running_too) {
  // Ids first: finishing a job may forget old finished ones, which changes jobs_.
  std::vector<std::uint64_t> ids;
  for (const auto& [id, j] : jobs_)
    if (j->state == job_state::queued || (running_too && j->state == job_state::running)) ids.push_back(id);
  std::sort(ids.begin(), ids.end());  // in submission order, as their ends are reported
  std::size_t lost = 0;
  for (const auto id : ids) {
    job* j = find(id);
    if (j == nullptr || is_terminal(j->state)) continue;
    if (j->state == job_state::running) j->running_on->abort(*j);  // its slot forgets it
    finish(*j, job_state::lost, error_outcome("NodeStopped", why), 0);
    ++lost;
  }
  return lost;
}

void scheduler::count_run(job& j, double run_seconds) {
  counters_.run_time.add(run_seconds);
  auto& n = counters_for(j.node);
  ++n.njobs;
  n.job_time += run_seconds;
  const function_def& f = *j.spec.function;
  // A mean over the last ~16 runs: recent behaviour decides, one outlier does not.
  f.runs += 1;
  const double weight = f.runs < 16 ? 1.0 / static_cast<double>(f.runs) : 1.0 / 16;
  f.mean_run_seconds += weight * (run_seconds - f.mean_run_seconds);
}

void scheduler::failed(job& j, std::string outcome, double run_seconds) {
  if (j.state != job_state::running || j.failures >= j.spec.retries || !refusal_.empty()) {
    // Its retries are spent (or the node is draining: a rerun would be lost): the last outcome stands.
    finish(j, job_state::failed, std::move(outcome), run_seconds);
    return;
  }
  // It ran: its time counts, as pp counts every run.
  count_run(j, run_seconds);
  ++counters_.retried;
  ++j.failures;
  const bool wait = j.spec.retry_backoff.count() > 0 && executor_;
  back_to_queue(j, /*now=*/!wait);
  if (wait) rerun_after_backoff(j);
}

void scheduler::back_to_queue(job& j, bool now) {
  --counters_.running;
  ++counters_.queued;
  j.state = job_state::queued;
  j.running_on = nullptr;
  // At the front of its priority: it was at the head of the line once already.
  if (now) enqueue(j, true);
  if (recorder_ != nullptr) recorder_->job_changed(j);
  if (events_ != nullptr) events_->on_job_event(j, job_event::queued);
  if (now) dispatch_to_waiting_slot();
}

void scheduler::rerun_after_backoff(job& j) {
  // backoff, 2 x backoff, 4 x ... before the first, second, third rerun; at most an hour.
  const auto wait = std::min<std::chrono::milliseconds>(
      j.spec.retry_backoff * (std::int64_t{1} << std::min(j.failures - 1, 20)), std::chrono::hours(1));
  auto timer = std::make_shared<net::steady_timer>(*executor_, wait);
  // The job waits in state queued: it may be cancelled (or lost in a drain) meanwhile, which the
  // timer sees from its state and its attempt count.
  timer->async_wait([this, timer, id = j.id, attempts = j.attempts](boost::system::error_code ec) {
    job* waiting = find(id);
    if (ec || waiting == nullptr || waiting->state != job_state::queued || waiting->attempts != attempts) return;
    enqueue(*waiting, true);
    dispatch_to_waiting_slot();
  });
}

void scheduler::finish(job& j, job_state end, std::string outcome, double run_seconds) {
  if (j.state == job_state::running) {
    --counters_.running;
    if (end == job_state::done || end == job_state::failed) count_run(j, run_seconds);
  } else if (j.state == job_state::queued) {
    --counters_.queued;  // its id stays in queue_ and is skipped when popped
  }
  j.state = end;
  j.running_on = nullptr;
  j.spec.refs.clear();  // a value put once lives while its session keeps it or a job may run
  j.spec.attachments.reset();
  j.outcome = std::move(outcome);
  j.run_seconds = run_seconds;
  j.finished = steady_clock::now();
  j.finished_unix = unix_now();
  switch (end) {
    case job_state::done: ++counters_.done; break;
    case job_state::failed: ++counters_.failed; break;
    case job_state::cancelled: ++counters_.cancelled; break;
    case job_state::lost: ++counters_.lost; break;
    default: break;
  }
  counters_.latency.add(std::chrono::duration<double>(j.finished - j.submitted).count());
  if (end == job_state::failed || end == job_state::lost) {
    failure_record f;
    f.id = j.id;
    f.function = j.spec.function->entry;
    f.node = j.node;
    f.unix_time = j.finished_unix;
    f.outcome = j.outcome.size() <= max_failure_outcome
                    ? j.outcome
                    : error_outcome("OutputTooLarge", "the failure's details are too large to keep here; "
                                                      "job " + std::to_string(j.id) + "'s own record has them");
    recent_failures_.push_back(std::move(f));
    if (recent_failures_.size() > kept_failures) recent_failures_.pop_front();
  }
  for (auto& w : j.waiters)
    if (auto timer = w.lock()) timer->cancel();
  j.waiters.clear();
  if (recorder_ != nullptr) recorder_->job_ended(j);
  if (auto o = j.observer.lock()) o->job_ended(j);
  if (events_ != nullptr) events_->on_job_event(j, job_event::ended);
  remember_finished(j);
}

void scheduler::interrupted(job& j, std::string_view why, bool node_lost) {
  const int budget = node_lost ? std::max(j.spec.retries, node_loss_retries) : j.spec.retries;
  if (++j.interruptions <= budget) {
    ++counters_.retried;
    back_to_queue(j, true);
    return;
  }
  std::string message(why);
  message += " (attempt " + std::to_string(j.interruptions) + " of " + std::to_string(budget + 1) + ")";
  if (node_lost)
    finish(j, job_state::lost, error_outcome("NodeLost", message), 0);
  else
    finish(j, job_state::failed, error_outcome("WorkerDied", message), 0);
}

void scheduler::requeue(job& j) {
  --j.attempts;  // it never ran
  back_to_queue(j, true);
}

job& scheduler::restore(job_spec spec, const restored_job& r) {
  auto owned = std::make_unique<job>();
  job& j = *owned;
  j.id = r.id;
  j.seq = r.seq;
  j.spec = std::move(spec);
  j.state = r.state;
  j.attempts = r.attempts;
  j.interruptions = r.interruptions;
  j.failures = r.failures;
  j.node = r.node;
  j.submitted = j.started = j.finished = steady_clock::now();
  if (r.id < client_id_min) next_id_ = std::max(next_id_, r.id + 1);
  next_seq_ = std::max(next_seq_, r.seq + 1);
  jobs_.emplace(j.id, std::move(owned));
  if (is_terminal(r.state)) {
    j.outcome = r.outcome;
    j.run_seconds = r.run_seconds;
    j.finished_unix = r.finished_unix;
    j.spec.refs.clear();
    remember_finished(j);
  } else {
    j.state = job_state::queued;
    ++counters_.submitted;
    ++counters_.queued;
    enqueue(j, false);
  }
  return j;
}

void scheduler::notify_on_end(job& j, const std::shared_ptr<net::steady_timer>& waiter) {
  std::erase_if(j.waiters, [](auto& w) { return w.expired(); });
  j.waiters.push_back(waiter);
}

void scheduler::remember_finished(job& j) {
  finished_order_.push_back(j.id);
  finished_bytes_ += j.outcome.size();
  while (finished_order_.size() > opts_.keep_finished ||
         (finished_bytes_ > opts_.keep_finished_bytes && finished_order_.size() > 1))
    forget_oldest_finished();
}

void scheduler::forget_oldest_finished() {
  if (auto it = jobs_.find(finished_order_.front()); it != jobs_.end()) {
    finished_bytes_ -= it->second->outcome.size();
    if (recorder_ != nullptr) recorder_->job_forgotten(*it->second);
    jobs_.erase(it);
  }
  finished_order_.pop_front();
}

void scheduler::expire_finished() {
  if (!opts_.keep_finished_for) return;
  // In the order they ended; a restored job keeps the time it ended at.
  const double oldest_kept = unix_now() - static_cast<double>(opts_.keep_finished_for->count());
  while (!finished_order_.empty()) {
    const job* j = find(finished_order_.front());
    if (j != nullptr && j->finished_unix >= oldest_kept) break;
    forget_oldest_finished();
  }
}

node_counters& scheduler::counters_for(const std::string& node_name) {
  for (auto& n : counters_.nodes)
    if (n.name == node_name) return n;
  counters_.nodes.emplace_back().name = node_name;
  return counters_.nodes.back();
}

void scheduler::register_node(const node& n) {
  nodes_.push_back(&n);
  counters_for(n.name());
}

scheduler_stats scheduler::stats() const {
  scheduler_stats s = counters_;
  s.elapsed_seconds = std::chrono::duration<double>(steady_clock::now() - created_).count();
  for (const node* n : nodes_)
    for (auto& c : s.nodes)
      if (c.name == n->name()) {
        c.ncpus = n->slot_count();
        c.python = n->python_version();
      }
  return s;
}

}  // namespace ppgate
