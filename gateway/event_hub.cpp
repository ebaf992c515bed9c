#include "event_hub.hpp"

#include "event_session.hpp"
#include "json_writer.hpp"
#include "log.hpp"
#include "node_directory.hpp"
#include "stats_format.hpp"

namespace ppgate {

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string_view event_name(const job& j, job_event what) {
  switch (what) {
    case job_event::queued: return "queued";
    case job_event::started: return "started";
    case job_event::ended: return to_string(j.state);
  }
  return "unknown";
}

}  // namespace

event_hub::event_hub(net::any_io_executor ex, scheduler& sched, const node_directory& nodes,
                     std::chrono::milliseconds interval)
    : ex_(ex), sched_(sched), nodes_(nodes), interval_(interval) {}

void event_hub::start() {
  ticker_.emplace(ex_);
  net::co_spawn(ex_, tick_loop(), log::on_failure("event stream"));
}

void event_hub::stop() {
  stopped_ = true;
  if (ticker_) ticker_->cancel();
}

void event_hub::add(const std::shared_ptr<event_session>& subscriber) {
  subscribers_.push_back(subscriber);
  if (subscriber->wants_jobs()) ++job_subscribers_;
  subscriber->offer_snapshot(std::make_shared<const std::string>(snapshot()));
}

net::awaitable<void> event_hub::tick_loop() {
  auto next = steady_clock::now();
  while (!stopped_) {
    // A steady rate: each tick is due one interval after the previous one was due.
    next += interval_;
    ticker_->expires_at(next);
    co_await ticker_->async_wait(use_nothrow_awaitable);
    if (stopped_) co_return;
    std::erase_if(subscribers_, [](const auto& w) { return w.expired(); });
    job_subscribers_ = 0;
    const auto now = steady_clock::now();
    if (subscribers_.empty()) {
      snapshot();  // keep the rates' window current
      continue;
    }
    auto shared = std::make_shared<const std::string>(snapshot());
    for (const auto& w : subscribers_) {
      if (auto s = w.lock()) {
        s->drop_if_stalled(now);
        s->offer_snapshot(shared);
        job_subscribers_ += s->wants_jobs();
      }
    }
  }
}

std::string event_hub::snapshot() {
  const scheduler_stats stats = sched_.stats();
  const auto now = steady_clock::now();
  const double window = std::chrono::duration<double>(now - last_time_).count();
  const std::uint64_t ended = stats.latency.count - last_latency_.count;
  const double rate = window > 0 ? static_cast<double>(ended) / window : 0;
  const double mean = ended ? (stats.latency.sum - last_latency_.sum) / static_cast<double>(ended) : 0;
  const double p50 = stats.latency.quantile_since(last_latency_, 0.5);
  const double p95 = stats.latency.quantile_since(last_latency_, 0.95);
  last_latency_ = stats.latency;
  last_time_ = now;

  std::string out = "{\"type\":\"snapshot\",\"seq\":" + std::to_string(++seq_) + ",\"time\":";
  append_json_number(out, unix_now());
  out += ",\"interval\":";
  append_json_number(out, std::chrono::duration<double>(interval_).count());
  out += ",\"stats\":";
  out += format_stats_json(stats, nodes_.total_slots());
  out += ",\"rates\":{\"jobs_per_second\":";
  append_json_number(out, rate);
  out += ",\"latency_mean\":";
  append_json_number(out, mean);
  out += ",\"latency_p50\":";
  append_json_number(out, p50);
  out += ",\"latency_p95\":";
  append_json_number(out, p95);
  out += "},\"nodes\":";
  out += format_nodes_json(nodes_.nodes());
  out += ",\"recent_failures\":[";
  bool first = true;
  for (const auto& f : sched_.recent_failures()) {
    if (!first) out += ',';
    first = false;
    out += "{\"id\":" + std::to_string(f.id) + ",\"function\":";
    append_json_string(out, f.function);
    out += ",\"node\":";
    append_json_string(out, f.node);
    out += ",\"time\":";
    append_json_number(out, f.unix_time);
    out += ',';
    out += f.outcome;
    out += '}';
  }
  out += "]}";
  return out;
}

void event_hub::on_job_event(const job& j, job_event what) {
  if (job_subscribers_ == 0) return;
  std::string e = "{\"id\":" + std::to_string(j.id) + ",\"event\":\"";
  e += event_name(j, what);
  e += "\",\"function\":";
  append_json_string(e, j.spec.function->entry);
  e += ",\"group\":";
  append_json_string(e, j.spec.group);
  if (what != job_event::queued) {
    e += ",\"node\":";
    append_json_string(e, j.node);
  }
  e += ",\"time\":";
  append_json_number(e, unix_now());
  if (what == job_event::ended && (j.state == job_state::failed || j.state == job_state::lost)) {
    e += ',';
    e += j.outcome;
  }
  e += '}';
  for (const auto& w : subscribers_)
    if (auto s = w.lock(); s && s->wants_jobs()) s->offer_job_event(e);
}

}  // namespace ppgate
