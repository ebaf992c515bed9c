// The local pool with real worker processes: supervision, timeouts, cancel, resize.
#include "job_parser.hpp"
#include "local_pool.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <functional>

using namespace ppgate;

namespace {

// Every wait in these tests is bounded: run the loop until `done` or 20 s have passed.
bool run_until(net::io_context& io, const std::function<bool()>& done,
               std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto deadline = steady_clock::now() + limit;
  while (!done() && steady_clock::now() < deadline) {
    io.restart();
    io.run_for(std::chrono::milliseconds(10));
  }
  return done();
}

struct fixture {
  net::io_context io;
  scheduler sched{scheduler::options{}};
  std::unique_ptr<local_pool> pool;

  explicit fixture(std::size_t workers, std::size_t max_jobs_per_process = 0) {
    worker_options opts;
    // $PPGATE_TEST_WORKER_SCRIPT overrides the build's own worker: a sanitized build's extension
    // module cannot load into an interpreter built without the sanitizer.
    const char* script = std::getenv("PPGATE_TEST_WORKER_SCRIPT");
    opts.command = {PPGATE_TEST_PYTHON, script != nullptr && *script != '\0' ? script : PPGATE_TEST_WORKER_SCRIPT};
    opts.python_version = "3";
    opts.max_jobs_per_process = max_jobs_per_process;
    pool = std::make_unique<local_pool>(io.get_executor(), sched, std::move(opts));
    pool->resize(workers);
  }
  ~fixture() { pool->shutdown(); }

  job& submit(std::string body) {
    auto s = parse_job_submission(body, [this](function_def d) { return sched.intern(std::move(d)); });
    return sched.submit(std::move(s.jobs.at(0)));
  }
  bool wait_end(const job& j) {
    return run_until(io, [&] { return is_terminal(j.state); });
  }
  bool wait_idle(std::size_t n) {
    return run_until(io, [&] { return sched.idle_slots() == n; });
  }
};

}  // namespace

TEST_CASE("a worker runs a job and returns its result and output") {
  fixture f(1);
  auto& j = f.submit(R"({"source":"def f(x):\n    print('out', x)\n    return [x, x*2]\n","function":"f","args":[21]})");
  REQUIRE(f.wait_end(j));
  CHECK(j.state == job_state::done);
  CHECK(j.outcome == R"("result":[21,42],"stdout":"out 21\n","stderr":"")");
}

TEST_CASE("a job whose worker dies is failed and its slot refilled") {
  fixture f(1);
  auto& crash = f.submit(R"({"source":"import os\ndef f():\n    os._exit(7)\n","function":"f"})");
  REQUIRE(f.wait_end(crash));
  CHECK(crash.state == job_state::failed);
  CHECK(crash.outcome.find("exited with status 7") != std::string::npos);
  auto& next = f.submit(R"({"source":"def g():\n    return 'alive'\n","function":"g"})");
  REQUIRE(f.wait_end(next));
  CHECK(next.outcome.find("\"result\":\"alive\"") == 0);
  CHECK(f.sched.stats().worker_restarts >= 1);
}

TEST_CASE("a segfaulting job with a retry budget is retried, then failed with the signal named") {
  fixture f(1);
  auto& j = f.submit(R"({"source":"import ctypes\ndef f():\n    ctypes.string_at(0)\n","function":"f","retries":1})");
  REQUIRE(f.wait_end(j));
  CHECK(j.state == job_state::failed);
  CHECK(j.attempts == 2);
  CHECK(j.outcome.find("SIGSEGV") != std::string::npos);
}

TEST_CASE("a job over its timeout is failed and its worker replaced") {
  fixture f(1);
  auto& j = f.submit(R"({"source":"import time\ndef f():\n    time.sleep(30)\n","function":"f","timeout":0.2})");
  REQUIRE(f.wait_end(j));
  CHECK(j.state == job_state::failed);
  CHECK(j.outcome.find("TimeoutError") != std::string::npos);
  REQUIRE(f.wait_idle(1));
}

TEST_CASE("cancelling a running job kills its worker and frees the slot") {
  fixture f(1);
  auto& j = f.submit(R"({"source":"import time\ndef f():\n    time.sleep(30)\n","function":"f"})");
  REQUIRE(run_until(f.io, [&] { return j.state == job_state::running; }));
  CHECK(f.sched.cancel(j.id) == scheduler::cancel_result::cancelled);
  CHECK(j.state == job_state::cancelled);
  auto& next = f.submit(R"({"source":"def g():\n    return 1\n","function":"g"})");
  REQUIRE(f.wait_end(next));
  INFO(next.outcome);
  CHECK(next.state == job_state::done);
}

TEST_CASE("the pool grows and shrinks at run time") {
  fixture f(1);
  REQUIRE(f.wait_idle(1));
  f.pool->resize(3);
  CHECK(f.pool->size() == 3);
  REQUIRE(f.wait_idle(3));
  f.pool->resize(1);
  CHECK(f.pool->size() == 1);
  REQUIRE(f.wait_idle(1));
  auto& j = f.submit(R"({"source":"def g():\n    return 5\n","function":"g"})");
  REQUIRE(f.wait_end(j));
  CHECK(j.state == job_state::done);
}

TEST_CASE("with one job per process (pp's restart=True) every job gets a fresh process") {
  fixture f(1, 1);
  std::vector<std::string> pids;
  for (int i = 0; i < 3; ++i) {
    auto& j = f.submit(R"({"source":"import os\ndef f():\n    return os.getpid()\n","function":"f"})");
    REQUIRE(f.wait_end(j));
    pids.push_back(j.outcome.substr(0, j.outcome.find(',')));
  }
  CHECK(pids[0] != pids[1]);
  CHECK(pids[1] != pids[2]);
}

TEST_CASE("with three jobs per process, jobs placed behind each other run three to a process") {
  fixture f(1, 3);
  // Short jobs, submitted together: the slot would place many behind the running one, but never
  // past its process's third. Each job's result is its process's pid.
  std::vector<job*> jobs;
  for (int i = 0; i < 10; ++i)
    jobs.push_back(&f.submit(R"({"source":"import os\ndef f(i):\n    return os.getpid()\n","function":"f","args":[)" +
                             std::to_string(i) + "]}"));
  std::vector<std::string> pids;
  for (job* j : jobs) {
    REQUIRE(f.wait_end(*j));
    CHECK(j->state == job_state::done);
    pids.push_back(j->outcome.substr(0, j->outcome.find(',')));
  }
  for (std::size_t i = 0; i < pids.size(); ++i) {
    INFO("job " << i);
    if (i % 3 != 0) CHECK(pids[i] == pids[i - 1]);  // the same process as the job before
    else if (i > 0) CHECK(pids[i] != pids[i - 1]);  // a fresh one
  }
  CHECK(f.pool->workers().at(0).jobs_run == 10);
}

TEST_CASE("a repeated function is sent to a worker once, then referenced by its hash") {
  fixture f(1);
  for (int i = 0; i < 3; ++i) {
    auto& j = f.submit(R"({"source":"def f(x):\n    return x\n","function":"f","args":[1]})");
    REQUIRE(f.wait_end(j));
    CHECK(j.state == job_state::done);
  }
  auto& other = f.submit(R"({"source":"def g():\n    return 2\n","function":"g"})");
  REQUIRE(f.wait_end(other));
  CHECK(f.pool->workers().at(0).sources_sent == 2);
  CHECK(f.pool->workers().at(0).jobs_run == 4);
}

TEST_CASE("jobs of different functions do not see each other's definitions") {
  fixture f(1);
  auto& a = f.submit(R"({"source":"SECRET = 1\ndef a():\n    return SECRET\n","function":"a"})");
  REQUIRE(f.wait_end(a));
  auto& b = f.submit(R"({"source":"def b():\n    return 'SECRET' in globals()\n","function":"b"})");
  REQUIRE(f.wait_end(b));
  CHECK(b.outcome.find("\"result\":false") == 0);
}

TEST_CASE("a result that cannot be encoded fails that job and the worker lives on") {
  fixture f(1);
  auto& j = f.submit(R"({"source":"def f():\n    return object()\n","function":"f"})");
  REQUIRE(f.wait_end(j));
  CHECK(j.state == job_state::failed);
  CHECK(j.outcome.find("cannot be encoded as json") != std::string::npos);
  auto& k = f.submit(R"({"source":"def f():\n    return 2\n","function":"f"})");
  REQUIRE(f.wait_end(k));
  CHECK(k.state == job_state::done);
  CHECK(f.sched.stats().worker_restarts == 0);
}
