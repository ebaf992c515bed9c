#include "event_hub.hpp"

#include "event_session.hpp"
#include "json_writer.hpp"
#include "log.hpp"
#include "node_directory.hpp"
#include "stats_format.hpp"

namespace ppgate {

namespace {

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

  std::string out;
  json_writer w(out);
  w.begin_object()
      .member("type", "snapshot")
      .member("seq", ++seq_)
      .member("time", unix_now())
      .member("interval", std::chrono::duration<double>(interval_).count());
  w.key("stats");
  write_stats_json(w, stats, nodes_.total_slots());
  w.key("rates")
      .begin_object()
      .member("jobs_per_second", rate)
      .member("latency_mean", mean)
      .member("latency_p50", p50)
      .member("latency_p95", p95)
      .end_object();
  w.key("nodes");
  write_nodes_json(w, nodes_.nodes());
  w.key("recent_failures").begin_array();
  for (const auto& f : sched_.recent_failures()) {
    w.begin_object()
        .member("id", f.id)
        .member("function", f.function)
        .member("node", f.node)
        .member("time", f.unix_time)
        .raw_items(f.outcome)
        .end_object();
  }
  w.end_array().end_object();
  return out;
}

void event_hub::on_job_event(const job& j, job_event what) {
  if (job_subscribers_ == 0) return;
  std::string e;
  json_writer w(e);
  w.begin_object()
      .member("id", j.id)
      .member("event", event_name(j, what))
      .member("function", j.spec.function->entry)
      .member("group", j.spec.group);
  if (what != job_event::queued) w.member("node", j.node);
  w.member("time", unix_now());
  if (what == job_event::ended && (j.state == job_state::failed || j.state == job_state::lost))
    w.raw_items(j.outcome);
  w.end_object();
  for (const auto& subscriber : subscribers_)
    if (auto s = subscriber.lock(); s && s->wants_jobs()) s->offer_job_event(e);
}

}  // namespace ppgate
