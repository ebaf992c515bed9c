// The scheduler alone, with recording slots standing in for workers.
#include "scheduler.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include <algorithm>

using namespace ppgate;

namespace {

struct test_node : node {
  std::string n;
  explicit test_node(std::string name) : n(std::move(name)) {}
  const std::string& name() const override { return n; }
  std::size_t slot_count() const override { return 1; }
  const std::string& python_version() const override { return n; }
};

struct recording_slot : slot {
  test_node& home;
  std::vector<std::uint64_t> started;
  job* current = nullptr;
  int aborts = 0;
  explicit recording_slot(test_node& h) : home(h) {}
  node& owner() override { return home; }
  void start(job& j) override {
    started.push_back(j.id);
    current = &j;
  }
  void abort(job&) override {
    ++aborts;
    current = nullptr;
  }
};

job_spec make_spec(const std::string& group = "default") {
  job_spec s;
  auto f = std::make_shared<function_def>();
  f->entry = "f";
  f->source = "def f(): pass";
  f->hash = function_hash(f->entry, f->modules, f->source);
  s.function = f;
  s.group = group;
  return s;
}

}  // namespace

TEST_CASE("jobs run in submission order on the slot that asks first") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home), b(home);
  const auto j1 = sched.submit(make_spec()).id;
  const auto j2 = sched.submit(make_spec("other")).id;
  const auto j3 = sched.submit(make_spec()).id;
  CHECK(sched.queue_depth() == 3);
  sched.slot_ready(b);
  sched.slot_ready(a);
  CHECK(b.started == std::vector<std::uint64_t>{j1});
  CHECK(a.started == std::vector<std::uint64_t>{j2});
  sched.finish(*b.current, job_state::done, "\"result\":1", 0.5);
  sched.slot_ready(b);
  CHECK(b.started == std::vector<std::uint64_t>{j1, j3});
  CHECK(sched.find(j1)->state == job_state::done);
  CHECK(sched.find(j1)->node == "local");
}

TEST_CASE("an idle slot receives a job as soon as it is submitted") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  sched.slot_ready(a);
  CHECK(sched.idle_slots() == 1);
  auto& j = sched.submit(make_spec());
  CHECK(j.state == job_state::running);
  CHECK(a.started == std::vector<std::uint64_t>{j.id});
  CHECK(sched.idle_slots() == 0);
}

TEST_CASE("a cancelled queued job is dropped and never started") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  const auto j1 = sched.submit(make_spec()).id;
  const auto j2 = sched.submit(make_spec()).id;
  CHECK(sched.cancel(j1) == scheduler::cancel_result::cancelled);
  CHECK(sched.cancel(j1) == scheduler::cancel_result::already_finished);
  CHECK(sched.cancel(999) == scheduler::cancel_result::not_found);
  sched.slot_ready(a);
  CHECK(a.started == std::vector<std::uint64_t>{j2});
  CHECK(sched.find(j1)->state == job_state::cancelled);
  CHECK(sched.stats().cancelled == 1);
  CHECK(sched.queue_depth() == 0);
}

TEST_CASE("cancelling a running job takes it back from its slot") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  sched.slot_ready(a);
  const auto id = sched.submit(make_spec()).id;
  CHECK(sched.cancel(id) == scheduler::cancel_result::cancelled);
  CHECK(a.aborts == 1);
  CHECK(sched.running() == 0);
  CHECK(sched.find(id)->state == job_state::cancelled);
}

TEST_CASE("an interrupted job is retried first while its budget lasts, then failed") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  auto spec = make_spec();
  spec.retries = 1;
  const auto id = sched.submit(std::move(spec)).id;
  const auto other = sched.submit(make_spec()).id;
  sched.slot_ready(a);
  sched.interrupted(*sched.find(id), "the worker died");
  CHECK(sched.find(id)->state == job_state::queued);
  sched.slot_ready(a);
  CHECK(a.started == std::vector<std::uint64_t>{id, id});
  sched.interrupted(*sched.find(id), "the worker died");
  const job& j = *sched.find(id);
  CHECK(j.state == job_state::failed);
  CHECK(j.outcome.find("WorkerDied") != std::string::npos);
  CHECK(j.outcome.find("attempt 2 of 2") != std::string::npos);
  sched.slot_ready(a);
  CHECK(a.started.back() == other);
}

TEST_CASE("a busy slot is given a second job only when its function is known to be short") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  auto spec = make_spec();
  const auto first = sched.submit(spec).id;
  sched.slot_ready(a);
  // Nothing is known of the function yet: the next job waits in the queue.
  const auto second = sched.submit(spec).id;
  sched.slot_can_prefetch(a, scheduler::prefetch_budget_seconds);
  CHECK(a.started == std::vector<std::uint64_t>{first});
  sched.finish(*sched.find(first), job_state::done, "", 0.00001);
  sched.slot_ready(a);
  CHECK(a.started == std::vector<std::uint64_t>{first, second});
  // Now it is known to be short: a job submitted while the slot is busy goes behind it.
  sched.slot_can_prefetch(a, scheduler::prefetch_budget_seconds);
  const auto third = sched.submit(spec).id;
  CHECK(a.started == std::vector<std::uint64_t>{first, second, third});
  // A long function is never placed behind another.
  auto slow = make_spec();
  auto slow_def = std::make_shared<function_def>(*slow.function);
  slow_def->runs = 5;
  slow_def->mean_run_seconds = 1.0;
  slow.function = slow_def;
  sched.slot_can_prefetch(a, scheduler::prefetch_budget_seconds);
  sched.submit(slow);
  CHECK(a.started.size() == 3);
}

TEST_CASE("a job with a timeout is never placed behind another: its clock needs a known start") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  auto spec = make_spec();
  auto def = std::make_shared<function_def>(*spec.function);
  def->runs = 5;
  def->mean_run_seconds = 0.00001;
  spec.function = def;
  sched.submit(spec);
  sched.slot_ready(a);
  sched.slot_can_prefetch(a, scheduler::prefetch_budget_seconds);
  auto timed = spec;
  timed.timeout = std::chrono::milliseconds(100);
  sched.submit(timed);
  CHECK(a.started.size() == 1);
  sched.submit(spec);  // behind the timed job in the queue: FIFO holds
  CHECK(a.started.size() == 1);
}

TEST_CASE("a job given back before it started is queued first, with no attempt counted") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home), b(home);
  const auto id = sched.submit(make_spec()).id;
  const auto later = sched.submit(make_spec()).id;
  sched.slot_ready(a);
  sched.requeue(*sched.find(id));
  CHECK(sched.find(id)->attempts == 0);
  CHECK(sched.find(id)->state == job_state::queued);
  sched.slot_ready(b);
  CHECK(b.started == std::vector<std::uint64_t>{id});
  sched.slot_ready(a);
  CHECK(a.started.back() == later);
  CHECK(sched.stats().retried == 0);
}

TEST_CASE("finished jobs beyond the retention limit are forgotten, oldest first") {
  scheduler::options keep_two;
  keep_two.keep_finished = 2;
  scheduler sched(keep_two);
  test_node home("local");
  recording_slot a(home);
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(sched.submit(make_spec()).id);
    sched.slot_ready(a);
    sched.finish(*a.current, job_state::done, "\"result\":null", 0);
  }
  CHECK(sched.find(ids[0]) == nullptr);
  CHECK(sched.find(ids[1]) != nullptr);
  CHECK(sched.find(ids[2]) != nullptr);
}

TEST_CASE("a waiter is woken when its job ends") {
  net::io_context io;
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  sched.slot_ready(a);
  auto& j = sched.submit(make_spec());
  auto timer = std::make_shared<net::steady_timer>(io, std::chrono::hours(1));
  bool woken = false;
  timer->async_wait([&](boost::system::error_code ec) { woken = ec == net::error::operation_aborted; });
  sched.notify_on_end(j, timer);
  sched.finish(j, job_state::done, "\"result\":1", 0);
  io.run_for(std::chrono::seconds(5));
  CHECK(woken);
}

TEST_CASE("per-node statistics count jobs and their time") {
  scheduler sched({});
  test_node home("local");
  sched.register_node(home);
  recording_slot a(home);
  for (int i = 0; i < 4; ++i) {
    sched.submit(make_spec());
    sched.slot_ready(a);
    sched.finish(*a.current, i == 3 ? job_state::failed : job_state::done, "", 0.25);
  }
  const auto s = sched.stats();
  REQUIRE(s.nodes.size() == 1);
  CHECK(s.nodes[0].ncpus == 1);
  CHECK(s.nodes[0].njobs == 4);
  CHECK(s.nodes[0].job_time == Approx(1.0));
  CHECK(s.done == 3);
  CHECK(s.failed == 1);
  CHECK(s.submitted == 4);
}

TEST_CASE("a drain hands queued jobs back, then ends what is left lost") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  const auto running = sched.submit(make_spec()).id;
  sched.slot_ready(a);
  const auto queued1 = sched.submit(make_spec()).id;
  const auto queued2 = sched.submit(make_spec()).id;
  CHECK(sched.accepting());
  sched.stop_accepting("draining");
  CHECK_FALSE(sched.accepting());
  CHECK(sched.refusal() == "draining");
  // Only a queued job goes back.
  CHECK_FALSE(sched.hand_back(running, "back"));
  CHECK(sched.hand_back(queued1, "back"));
  CHECK(sched.find(queued1)->state == job_state::cancelled);
  CHECK(sched.find(queued1)->outcome.find("HandedBack") != std::string::npos);
  // The queued ones first; the running one when asked, taken back from its slot.
  CHECK(sched.lose_unfinished("not started", false) == 1);
  CHECK(sched.find(queued2)->state == job_state::lost);
  CHECK(sched.find(running)->state == job_state::running);
  CHECK(sched.lose_unfinished("timed out", true) == 1);
  CHECK(sched.find(running)->state == job_state::lost);
  CHECK(sched.find(running)->outcome.find("NodeStopped") != std::string::npos);
  CHECK(a.aborts == 1);
  CHECK(sched.running() == 0);
  CHECK(sched.queue_depth() == 0);
  CHECK(sched.lose_unfinished("again", true) == 0);
}

TEST_CASE("jobs go by priority, higher first, first come first served within one") {
  scheduler sched({});
  test_node home("local"), remote_home("peer");
  recording_slot a(home);
  std::vector<std::uint64_t> expected_order;
  std::vector<std::pair<int, std::uint64_t>> submitted;
  for (int i = 0; i < 100; ++i) {
    auto spec = make_spec();
    spec.priority = (i * 7) % 5 - 2;  // -2 .. 2, interleaved
    submitted.emplace_back(spec.priority, sched.submit(std::move(spec)).id);
  }
  std::stable_sort(submitted.begin(), submitted.end(), [](auto& x, auto& y) { return x.first > y.first; });
  for (auto& [priority, id] : submitted) expected_order.push_back(id);
  for (int i = 0; i < 100; ++i) {
    sched.slot_ready(a);
    sched.finish(*a.current, job_state::done, "\"result\":1", 0);
  }
  CHECK(a.started == expected_order);
}

TEST_CASE("a job given back keeps its place at the head of its own priority") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  auto high = make_spec();
  high.priority = 5;
  const auto first = sched.submit(std::move(high)).id;
  const auto low = sched.submit(make_spec()).id;
  sched.slot_ready(a);
  CHECK(a.started.back() == first);
  auto higher = make_spec();
  higher.priority = 9;
  const auto urgent = sched.submit(std::move(higher)).id;
  sched.requeue(*sched.find(first));
  sched.slot_ready(a);
  CHECK(a.started.back() == urgent);
  sched.finish(*a.current, job_state::done, "\"result\":1", 0);
  sched.slot_ready(a);
  CHECK(a.started.back() == first);
  sched.finish(*a.current, job_state::done, "\"result\":1", 0);
  sched.slot_ready(a);
  CHECK(a.started.back() == low);
}

TEST_CASE("a job that failed is rerun while its retries last; only the last outcome is kept") {
  scheduler sched({});
  test_node home("local");
  recording_slot a(home);
  auto spec = make_spec();
  spec.retries = 2;
  const auto id = sched.submit(std::move(spec)).id;
  sched.slot_ready(a);
  sched.failed(*sched.find(id), R"("error":{"type":"ValueError","message":"1"})", 0.1);
  CHECK(sched.find(id)->state == job_state::queued);
  sched.slot_ready(a);
  sched.failed(*sched.find(id), R"("error":{"type":"ValueError","message":"2"})", 0.1);
  sched.slot_ready(a);
  // A worker death in between spends the other budget, not this one.
  sched.interrupted(*sched.find(id), "the worker died");
  sched.slot_ready(a);
  sched.failed(*sched.find(id), R"("error":{"type":"ValueError","message":"3"})", 0.1);
  const job& j = *sched.find(id);
  CHECK(j.state == job_state::failed);
  CHECK(j.attempts == 4);
  CHECK(j.failures == 2);
  CHECK(j.interruptions == 1);
  CHECK(j.outcome.find(R"("message":"3")") != std::string::npos);
  CHECK(sched.stats().failed == 1);
  CHECK(sched.stats().retried == 3);
  CHECK(sched.stats().nodes.at(0).njobs == 3);  // each run counts, as pp counts them
}

TEST_CASE("a rerun after a failure waits its backoff, doubled each time, and may be cancelled meanwhile") {
  net::io_context io;
  scheduler sched({});
  sched.set_executor(io.get_executor());
  test_node home("local");
  recording_slot a(home);
  auto spec = make_spec();
  spec.retries = 3;
  spec.retry_backoff = std::chrono::milliseconds(40);
  const auto id = sched.submit(std::move(spec)).id;
  sched.slot_ready(a);
  auto failed_at = steady_clock::now();
  sched.failed(*sched.find(id), R"("error":{"type":"E"})", 0);
  sched.slot_ready(a);
  CHECK(a.started.size() == 1);  // waiting out the backoff, though a slot is free
  io.run_one_for(std::chrono::seconds(5));
  CHECK(a.started.size() == 2);
  CHECK(steady_clock::now() - failed_at >= std::chrono::milliseconds(40));
  failed_at = steady_clock::now();
  sched.failed(*sched.find(id), R"("error":{"type":"E"})", 0);
  sched.slot_ready(a);
  io.restart();
  io.run_one_for(std::chrono::seconds(5));
  CHECK(a.started.size() == 3);
  CHECK(steady_clock::now() - failed_at >= std::chrono::milliseconds(80));
  // Cancelled while it waits: the timer finds it cancelled and starts nothing.
  sched.failed(*sched.find(id), R"("error":{"type":"E"})", 0);
  CHECK(sched.cancel(id) == scheduler::cancel_result::cancelled);
  sched.slot_ready(a);
  io.restart();
  io.run_for(std::chrono::milliseconds(300));
  CHECK(a.started.size() == 3);
  CHECK(sched.find(id)->state == job_state::cancelled);
  CHECK(sched.queue_depth() == 0);
}

TEST_CASE("finished jobs older than keep_finished_for are forgotten, a restored one by the time it ended") {
  scheduler::options opts;
  opts.keep_finished_for = std::chrono::seconds(60);
  scheduler sched(opts);
  test_node home("local");
  recording_slot a(home);
  // Ended two minutes ago (as a journal gives it back), then one that ends now.
  restored_job old;
  old.id = 7;
  old.seq = 1;
  old.state = job_state::done;
  old.outcome = "\"result\":1,\"stdout\":\"\",\"stderr\":\"\"";
  old.finished_unix = unix_now() - 120;
  sched.restore(make_spec(), old);
  const auto fresh = sched.submit(make_spec()).id;
  sched.slot_ready(a);
  sched.finish(*a.current, job_state::done, "\"result\":2", 0);
  CHECK(sched.find(7) != nullptr);
  sched.expire_finished();
  CHECK(sched.find(7) == nullptr);
  CHECK(sched.find(fresh) != nullptr);
  CHECK(fresh == 8);  // the node's own ids go on after the restored ones
}

TEST_CASE("an id chosen by the submitter is refused when in use or chosen twice in one batch") {
  scheduler sched({});
  auto chosen = [](std::uint64_t id) {
    job_spec s = make_spec();
    s.requested_id = id;
    return s;
  };
  const std::uint64_t first = (1ull << 40) + 1;
  CHECK(sched.submit(chosen(first)).id == first);
  std::vector<job_spec> batch;
  for (std::uint64_t i = 0; i < 3000; ++i) batch.push_back(chosen(first + 1 + i));
  CHECK(sched.ids_taken(batch).empty());
  batch.push_back(chosen(first + 2000));  // twice, far apart
  CHECK(sched.ids_taken(batch) == "job id " + std::to_string(first + 2000) + " is already in use");
  batch.pop_back();
  batch.push_back(chosen(first));  // the job submitted before
  CHECK(sched.ids_taken(batch) == "job id " + std::to_string(first) + " is already in use");
}
