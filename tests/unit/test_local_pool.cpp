// The local pool with real worker processes: supervision, timeouts, cancel, resize.
#include "job_parser.hpp"
#include "frame.hpp"
#include "local_pool.hpp"
#include "worker_process.hpp"
#include "worker_protocol.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

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

const char* worker_script() {
  // $PPGATE_TEST_WORKER_SCRIPT overrides the build's own worker: a sanitized build's extension
  // module cannot load into an interpreter built without the sanitizer.
  const char* script = std::getenv("PPGATE_TEST_WORKER_SCRIPT");
  return script != nullptr && *script != '\0' ? script : PPGATE_TEST_WORKER_SCRIPT;
}

// A worker this test process starts itself, as the Python client forks one, for a pool to adopt.
adopted_process start_adoptable_worker() {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 3);
  std::string python = PPGATE_TEST_PYTHON, script = worker_script(), fd = "3", node = std::to_string(::getpid());
  std::string fd_flag = "--fd", node_flag = "--node-pid";
  char* argv[] = {python.data(), script.data(), fd_flag.data(), fd.data(), node_flag.data(), node.data(), nullptr};
  pid_t pid = 0;
  REQUIRE(::posix_spawn(&pid, python.c_str(), &actions, nullptr, argv, environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  return {fds[0], pid};
}

// An adoptable process that exits at once; `reaped`: and is gone before it is adopted.
adopted_process start_short_lived_process(bool reaped) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::close(fds[1]);
  if (reaped) ::waitpid(pid, nullptr, 0);
  return {fds[0], pid};
}

// Waits (bounded) for child `pid` of this test to end; its wait status, or -1.
int reap_within(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = steady_clock::now() + limit;
  int status = 0;
  while (steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    ::usleep(5000);
  }
  return -1;
}

struct fixture {
  net::io_context io;
  scheduler sched{scheduler::options{}};
  std::unique_ptr<local_pool> pool;

  explicit fixture(std::size_t workers, std::size_t max_jobs_per_process = 0,
                   const std::function<void(worker_options&)>& tune = {},
                   const std::vector<adopted_process>& adopted = {}) {
    worker_options opts;
    opts.command = {PPGATE_TEST_PYTHON, worker_script(), {}};
    opts.python_version = "3";
    opts.max_jobs_per_process = max_jobs_per_process;
    if (tune) tune(opts);
    pool = std::make_unique<local_pool>(io.get_executor(), sched, std::move(opts));
    pool->adopt(adopted);
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

TEST_CASE("an adopted worker runs the first jobs, then hands its slot to a fresh process, uncounted") {
  const adopted_process first = start_adoptable_worker(), surplus = start_adoptable_worker();
  const std::string whoami = R"({"source":"import os\ndef f():\n    return os.getpid()\n","function":"f"})";
  {
    fixture f(1, 0, {}, {first, surplus});
    // One slot: the second adopted worker has none, and is stopped.
    const int surplus_status = reap_within(surplus.pid, std::chrono::seconds(10));
    CHECK((WIFSIGNALED(surplus_status) && WTERMSIG(surplus_status) == SIGKILL));
    auto& j = f.submit(whoami);
    REQUIRE(f.wait_end(j));
    CHECK(j.outcome.starts_with("\"result\":" + std::to_string(first.pid) + ","));
    // The queue is empty: a fresh process takes over, and the adopted one is stopped.
    REQUIRE(run_until(f.io, [&] {
      const worker_info w = f.pool->workers().at(0);
      return w.pid != 0 && w.pid != first.pid;
    }));
    const int first_status = reap_within(first.pid, std::chrono::seconds(10));
    CHECK((WIFSIGNALED(first_status) && WTERMSIG(first_status) == SIGKILL));
    auto& k = f.submit(whoami);
    REQUIRE(f.wait_end(k));
    CHECK(k.state == job_state::done);
    CHECK(k.outcome.find("\"result\":" + std::to_string(f.pool->workers().at(0).pid) + ",") == 0);
    CHECK(f.pool->workers().at(0).jobs_run == 2);
    CHECK(f.sched.stats().worker_restarts == 0);  // a hand-over is no restart
  }
}

TEST_CASE("an adopted worker that is gone, or ends before it answers, leaves its slot to a worker of its own") {
  for (const bool reaped : {true, false}) {
    const adopted_process w = start_short_lived_process(reaped);
    fixture f(1, 0, {}, {w});
    auto& j = f.submit(R"({"source":"def f():\n    return 'fresh'\n","function":"f"})");
    REQUIRE(f.wait_end(j));
    CHECK(j.outcome.starts_with(R"("result":"fresh")"));
    if (!reaped) CHECK(reap_within(w.pid, std::chrono::seconds(10)) == 0);  // exited by itself
  }
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

std::uint64_t restarts(const scheduler& sched, restart_reason why) {
  return sched.stats().restarts_by_reason[static_cast<std::size_t>(why)];
}

TEST_CASE("a job leaking memory hits --max-worker-memory (RLIMIT_AS), fails clearly, and the next job runs") {
  constexpr std::uint64_t limit = 160u << 20;
  fixture f(1, 0, [](worker_options& o) {
    o.max_memory = limit;
    o.command.extra_args = {"--max-memory", std::to_string(limit), "--memory-rlimit"};
  });
  // Each job keeps 50 MiB more in a module of the worker: the fourth cannot have it.
  const std::string leak =
      R"({"source":"import json\ndef f():\n    json.kept = getattr(json, 'kept', []) + [bytearray(50 << 20)]\n    return len(json.kept)\n","function":"f"})";
  std::vector<std::string> outcomes;
  for (int i = 0; i < 4; ++i) {
    auto& j = f.submit(leak);
    REQUIRE(f.wait_end(j));
    outcomes.push_back(j.outcome);
    if (j.state == job_state::failed) break;
  }
  REQUIRE(outcomes.size() >= 2);
  CHECK(outcomes.front().starts_with(R"("result":1,)"));
  const std::string& failed = outcomes.back();
  INFO(failed);
  CHECK(failed.starts_with(R"("error":{"type":"WorkerMemoryError")"));
  CHECK(failed.find(std::to_string(limit) + " bytes") != std::string::npos);
  // Counted once the worker is reaped, which may be after its reply ended the job.
  CHECK(run_until(f.io, [&] { return restarts(f.sched, restart_reason::memory) == 1; }));
  // A fresh worker: the leak is gone, and the job runs again from nothing.
  auto& next = f.submit(leak);
  REQUIRE(f.wait_end(next));
  CHECK(next.outcome.starts_with(R"("result":1,)"));
}

TEST_CASE("a worker the kernel kills in its memory cgroup fails its job with WorkerMemoryError") {
  // A directory standing in for the node's cgroup v2 directory: the slot's own writes are
  // checked, and the job plays the kernel (it bumps oom_kill, then dies by SIGKILL).
  const auto root = std::filesystem::temp_directory_path() / ("ppgate-cgroup-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  { std::ofstream(root / "cgroup.controllers") << "cpu io memory pids\n"; }
  { std::ofstream(root / "cgroup.subtree_control") << ""; }
  std::string why_not;
  auto cgroups = worker_cgroups::prepare_at(root, ::getpid(), why_not);
  REQUIRE(cgroups);
  CHECK(why_not.empty());
  {
    std::ifstream in(root / "cgroup.subtree_control");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    CHECK(text == "+memory");
  }
  constexpr std::uint64_t limit = 1u << 30;
  {
    fixture f(1, 0, [&](worker_options& o) {
      o.max_memory = limit;
      o.cgroups = cgroups.get();
      o.command.extra_args = {"--max-memory", std::to_string(limit)};
    });
    auto& pid_job = f.submit(R"({"source":"import os\ndef f():\n    return os.getpid()\n","function":"f"})");
    REQUIRE(f.wait_end(pid_job));
    std::filesystem::path slot_dir;
    for (const auto& e : std::filesystem::directory_iterator(root))
      if (e.is_directory()) slot_dir = e.path();
    REQUIRE(!slot_dir.empty());
    std::ifstream procs(slot_dir / "cgroup.procs"), max(slot_dir / "memory.max");
    std::string pid, max_text;
    procs >> pid;
    max >> max_text;
    CHECK(pid_job.outcome.starts_with("\"result\":" + pid + ","));
    CHECK(max_text == std::to_string(limit));

    // Killed for memory twice: once, then on its one retry (a job that failed, not a worker
    // death that a rerun would survive: the retries budget for failures is the one spent).
    auto& killed = f.submit(R"({"source":"import os, signal\ndef f(events):\n    kills = int(open(events).read().split()[-1]) if os.path.exists(events) else 0\n    open(events, 'w').write('low 0\\noom 1\\noom_kill %d\\n' % (kills + 1))\n    os.kill(os.getpid(), signal.SIGKILL)\n","function":"f","args":[")" +
                            (slot_dir / "memory.events").string() + R"("],"retries":1})");
    REQUIRE(f.wait_end(killed));
    CHECK(killed.state == job_state::failed);
    CHECK(killed.attempts == 2);
    CHECK(killed.failures == 1);
    CHECK(killed.interruptions == 0);
    CHECK(killed.outcome.starts_with(R"("error":{"type":"WorkerMemoryError")"));
    CHECK(restarts(f.sched, restart_reason::memory) == 2);
    auto& next = f.submit(R"({"source":"def g():\n    return 'alive'\n","function":"g"})");
    REQUIRE(f.wait_end(next));
    CHECK(next.outcome.starts_with(R"("result":"alive")"));
  }
  // The slot removed its cgroup when it ended.
  CHECK(std::distance(std::filesystem::directory_iterator(root), {}) == 2);
  std::filesystem::remove_all(root);
}

TEST_CASE("restarts are counted by reason") {
  fixture f(1, 2);
  for (int i = 0; i < 2; ++i) {
    auto& j = f.submit(R"({"source":"def f():\n    return 1\n","function":"f"})");
    REQUIRE(f.wait_end(j));
  }
  auto& t = f.submit(R"({"source":"import time\ndef f():\n    time.sleep(30)\n","function":"f","timeout":0.2})");
  REQUIRE(f.wait_end(t));
  auto& c = f.submit(R"({"source":"import os\ndef f():\n    os._exit(3)\n","function":"f"})");
  REQUIRE(f.wait_end(c));
  REQUIRE(f.wait_idle(1));
  CHECK(restarts(f.sched, restart_reason::max_jobs) == 1);
  CHECK(restarts(f.sched, restart_reason::timeout) == 1);
  CHECK(restarts(f.sched, restart_reason::died) == 1);
  CHECK(f.sched.stats().worker_restarts == 3);
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

TEST_CASE("a job skipped by a worker and sent to it again runs, with the definitions the skipped one carried") {
  // The worker's own protocol, without a slot: a long job, a job of another function behind it
  // (carrying that function's definition), a skip note for it while the first runs, then the
  // same job again naming the function by its fn_id alone, as a node sends it once it took the
  // job back and gave it to this worker again.
  net::io_context io;
  const char* script = std::getenv("PPGATE_TEST_WORKER_SCRIPT");
  worker_process proc(io.get_executor(),
                      {PPGATE_TEST_PYTHON, script != nullptr && *script != '\0' ? script : PPGATE_TEST_WORKER_SCRIPT, {}});
  std::string out;
  append_worker_frame(out, 1, R"({"tag":1,"fn_id":1,"function":"f","source":"import time\ndef f():\n    time.sleep(0.5)\n    return 1\n","modules":[],"codec":"json"})");
  append_worker_frame(out, 2, R"({"tag":2,"fn_id":2,"function":"g","source":"def g(x):\n    return x * 2\n","modules":[],"codec":"json","args":[21]})");
  const int fd = proc.socket().native_handle();
  REQUIRE(::write(fd, out.data(), out.size()) == static_cast<ssize_t>(out.size()));
  ::usleep(200 * 1000);  // job 1 runs; job 2 waits in the worker
  out.clear();
  append_worker_frame(out, 3, "skip 2");
  append_worker_frame(out, 4, R"({"tag":2,"fn_id":2,"codec":"json","args":[4]})");
  REQUIRE(::write(fd, out.data(), out.size()) == static_cast<ssize_t>(out.size()));
  frame_reader reader;
  std::vector<std::string> replies;
  const auto deadline = steady_clock::now() + std::chrono::seconds(20);
  char buf[4096];
  while (replies.size() < 3 && steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    reader.feed(buf, static_cast<std::size_t>(n));
    std::string_view frame;
    while (reader.next(frame)) {
      const auto reply = parse_worker_reply(frame);
      replies.push_back(std::to_string(reply.end.id) + " " + std::string(reply.end.word) + " " +
                        std::string(reply.end.outcome.substr(0, reply.end.outcome.find(','))));
    }
  }
  REQUIRE(replies.size() == 3);
  CHECK(replies[0] == R"(1 ok "result":1)");
  CHECK(replies[1].starts_with("2 skipped"));
  CHECK(replies[2] == R"(2 ok "result":8)");
}
