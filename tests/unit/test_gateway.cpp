// The gateway's pieces without a whole node: the REST router over a real scheduler whose slots
// are fakes and a fake node directory, the connection limit (the tracker alone, then a listener on
// loopback), and the peer handshake's proofs and frame tags.
#include "connection_tracker.hpp"
#include "event_hub.hpp"
#include "frame.hpp"
#include "job_parser.hpp"
#include "listener.hpp"
#include "node_directory.hpp"
#include "peer/peer_protocol.hpp"
#include "rest_api.hpp"
#include "scheduler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <catch2/catch.hpp>
#include <simdjson.h>

#include <arpa/inet.h>
#include <future>
#include <netinet/in.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

using namespace ppgate;

namespace {

// The nodes a REST API sees: one local node of `workers` idle workers; records resizes.
struct fake_directory : node_directory {
  std::size_t workers = 2;
  std::vector<std::optional<std::size_t>> resizes;
  std::vector<node_summary> nodes() const override {
    node_summary local;
    local.name = "local";
    local.python = "3.11.2";
    local.slots = workers;
    for (std::size_t i = 0; i < workers; ++i) local.workers.push_back({static_cast<long>(100 + i), worker_state::idle});
    node_summary peer;
    peer.name = "10.0.0.2:7000";
    peer.remote = true;
    peer.slots = 4;
    peer.connected = false;
    peer.last_error = "connection refused";
    return {local, peer};
  }
  std::size_t local_workers() const override { return workers; }
  std::size_t total_slots() const override { return workers + 4; }
  void resize_local(std::optional<std::size_t> n) override {
    resizes.push_back(n);
    workers = n.value_or(8);
  }
};

// A slot that takes one job and ends it when told to.
struct fake_node : node {
  std::string n = "local", py = "3.11.2";
  const std::string& name() const override { return n; }
  std::size_t slot_count() const override { return 1; }
  const std::string& python_version() const override { return py; }
};

struct fake_slot : slot {
  fake_node& home;
  job* current = nullptr;
  explicit fake_slot(fake_node& h) : home(h) {}
  node& owner() override { return home; }
  void start(job& j) override { current = &j; }
  void abort(job&) override { current = nullptr; }
};

struct router {
  net::io_context io;
  scheduler sched{{}};
  fake_directory nodes;
  rest_api api;
  explicit router(std::string secret = {}) : api(sched, nodes, std::move(secret), false) {}

  http_response call(http::verb method, std::string target, std::string body = {},
                     std::vector<std::pair<std::string, std::string>> headers = {}) {
    http_request req{method, target, 11};
    req.set(http::field::host, "127.0.0.1:8080");
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = std::move(body);
    req.prepare_payload();
    std::optional<http_response> out;
    net::co_spawn(io, [&]() -> net::awaitable<void> { out = co_await api.handle(req); },
                  [](std::exception_ptr e) {
                    if (e) std::rethrow_exception(e);  // out of io.run(), to the test
                  });
    io.restart();
    io.run();
    REQUIRE(out);
    return *out;
  }
};

std::string field(const std::string& json, std::string_view pointer) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc = parser.parse(json);
  auto v = doc.at_pointer(pointer);
  if (v.error()) return "(absent)";
  return simdjson::to_string(v.value());
}

const std::string sq_job = R"({"source":"def sq(x):\n    return x*x\n","function":"sq","args":[7]})";

}  // namespace

TEST_CASE("the REST router answers each route, and a wrong method with 405 and Allow") {
  router r;
  auto res = r.call(http::verb::get, "/healthz");
  CHECK(res.result() == http::status::ok);
  CHECK(res.body() == R"({"status":"ok","workers":2})");
  res = r.call(http::verb::post, "/healthz");
  CHECK(res.result() == http::status::method_not_allowed);
  CHECK(res[http::field::allow] == "GET");
  res = r.call(http::verb::put, "/v1/jobs");
  CHECK(res.result() == http::status::method_not_allowed);
  CHECK(res[http::field::allow] == "GET, POST");
  res = r.call(http::verb::get, "/v1/jobs");
  CHECK(res.result() == http::status::ok);
  res = r.call(http::verb::put, "/v1/jobs/1");
  CHECK(res[http::field::allow] == "GET, DELETE");
  res = r.call(http::verb::get, "/v1/nothing");
  CHECK(res.result() == http::status::not_found);
  CHECK(field(res.body(), "/error/message") == R"("no route /v1/nothing")");
  res = r.call(http::verb::get, "/v1/jobs/abc");
  CHECK(res.result() == http::status::not_found);
  res = r.call(http::verb::get, "/");
  CHECK(res[http::field::content_type] == "text/html; charset=utf-8");
  res = r.call(http::verb::get, "/metrics");
  CHECK(res.body().find("ppgate_workers{state=\"idle\"} 2.0\n") != std::string::npos);
}

TEST_CASE("the REST router submits, reports and cancels jobs through the scheduler") {
  router r;
  auto res = r.call(http::verb::post, "/v1/jobs", sq_job);
  CHECK(res.result() == http::status::accepted);
  CHECK(res[http::field::location] == "/v1/jobs/1");
  CHECK(field(res.body(), "/status") == R"("queued")");
  CHECK(r.sched.queue_depth() == 1);

  // A slot takes the job and ends it: GET shows the outcome as the worker reported it.
  fake_node home;
  fake_slot s(home);
  r.sched.register_node(home);
  r.sched.slot_ready(s);
  REQUIRE(s.current != nullptr);
  r.sched.finish(*s.current, job_state::done, R"("result":49,"stdout":"","stderr":"")", 0.001);
  res = r.call(http::verb::get, "/v1/jobs/1?wait=5");
  CHECK(res.result() == http::status::ok);
  CHECK(field(res.body(), "/result") == "49");
  CHECK(field(res.body(), "/node") == R"("local")");

  // A batch with ?wait=0 answers at once with each job; a queued one cancels, then conflicts.
  res = r.call(http::verb::post, "/v1/jobs?wait=0", "[" + sq_job + "," + sq_job + "]");
  CHECK(res.result() == http::status::accepted);
  CHECK(res[http::field::location].empty());
  CHECK(field(res.body(), "/jobs/1/id") == "3");
  res = r.call(http::verb::delete_, "/v1/jobs/3");
  CHECK(res.result() == http::status::ok);
  CHECK(field(res.body(), "/status") == R"("cancelled")");
  CHECK(r.call(http::verb::delete_, "/v1/jobs/3").result() == http::status::conflict);
  CHECK(r.call(http::verb::delete_, "/v1/jobs/99").result() == http::status::not_found);

  res = r.call(http::verb::get, "/v1/stats");
  CHECK(field(res.body(), "/ncpus") == "6");  // the directory's total: local and peer slots
  CHECK(field(res.body(), "/jobs/done") == "1");
  CHECK(field(res.body(), "/jobs/cancelled") == "1");
  res = r.call(http::verb::get, "/v1/stats", {}, {{"Accept", "text/plain"}});
  CHECK(res.body().starts_with("Job execution statistics:\n"));
}

TEST_CASE("the REST router refuses bad input with 400 naming the problem") {
  router r;
  auto res = r.call(http::verb::post, "/v1/jobs", "[1,,2]");
  CHECK(res.result() == http::status::bad_request);
  res = r.call(http::verb::post, "/v1/jobs", R"({"function":"f","colour":"red"})");
  CHECK(res.result() == http::status::bad_request);
  CHECK(res.body().find("colour") != std::string::npos);
  res = r.call(http::verb::get, "/v1/jobs/1?wait=3601");
  CHECK(res.result() == http::status::bad_request);
  CHECK(res.body().find("'wait'") != std::string::npos);
  res = r.call(http::verb::put, "/v1/workers", R"({"count":2000})");
  CHECK(res.result() == http::status::bad_request);
  CHECK(r.nodes.resizes.empty());
  CHECK(r.sched.stats().submitted == 0);
}

TEST_CASE("the REST router resizes through the node directory and renders its nodes") {
  router r;
  auto res = r.call(http::verb::put, "/v1/workers", R"({"count":3})");
  CHECK(res.body() == R"({"count":3})");
  res = r.call(http::verb::put, "/v1/workers", R"({"count":"auto"})");
  CHECK(res.body() == R"({"count":8})");
  REQUIRE(r.nodes.resizes.size() == 2);
  CHECK(r.nodes.resizes[0] == std::optional<std::size_t>(3));
  CHECK_FALSE(r.nodes.resizes[1]);
  res = r.call(http::verb::get, "/v1/nodes");
  CHECK(field(res.body(), "/nodes/0/kind") == R"("local")");
  CHECK(field(res.body(), "/nodes/0/workers/7/state") == R"("idle")");
  CHECK(field(res.body(), "/nodes/0/workers/0/job") == "null");
  CHECK(field(res.body(), "/nodes/1/kind") == R"("remote")");
  CHECK(field(res.body(), "/nodes/1/connected") == "false");
  CHECK(field(res.body(), "/nodes/1/last_error") == R"("connection refused")");
}

TEST_CASE("with a secret the REST router wants the bearer token, except for /healthz and /") {
  router r("s3cret");
  auto res = r.call(http::verb::get, "/v1/stats");
  CHECK(res.result() == http::status::unauthorized);
  CHECK(res[http::field::www_authenticate] == "Bearer");
  CHECK(r.call(http::verb::get, "/v1/stats", {}, {{"Authorization", "Bearer wrong!"}}).result() ==
        http::status::unauthorized);
  CHECK(r.call(http::verb::get, "/v1/stats", {}, {{"Authorization", "Bearer s3cret"}}).result() == http::status::ok);
  CHECK(r.call(http::verb::get, "/healthz").result() == http::status::ok);
  CHECK(r.call(http::verb::post, "/v1/jobs", sq_job, {{"Authorization", "Bearer s3cret"}, {"Origin", "http://evil.example"}})
            .result() == http::status::forbidden);
}

TEST_CASE("at the connection limit the tracker closes a waiting connection of the largest holder") {
  net::io_context io;
  auto tracker = std::make_shared<connection_tracker>(std::make_shared<activity>());
  const auto a = net::ip::make_address("127.0.0.1"), b = net::ip::make_address("127.0.0.2"),
             c = net::ip::make_address("127.0.0.3");
  net::ip::tcp::socket a1(io), a2(io), a3(io), b1(io);
  std::vector<std::unique_ptr<connection_tracker::scoped>> open;
  for (const auto& from : {a, a, a, b}) open.push_back(std::make_unique<connection_tracker::scoped>(tracker, from));
  CHECK(tracker->open() == 4);
  CHECK(tracker->open_from(a) == 3);
  {
    connection_tracker::waiting wb(*tracker, b1, b), wa1(*tracker, a1, a), wa2(*tracker, a2, a);
    // A newcomer from a third address takes room from `a`, which holds the most: its oldest waiter.
    CHECK(tracker->make_room_for(c));
    CHECK(tracker->make_room_for(c));
    // Only `b`'s waiter is left: a newcomer from `a`, which holds more than `b`, may not take it.
    CHECK_FALSE(tracker->make_room_for(a));
    CHECK(tracker->make_room_for(b));  // its own waiter makes room for it
    CHECK_FALSE(tracker->make_room_for(c));  // nobody waits any more
  }
  open.clear();
  CHECK(tracker->open() == 0);
  CHECK(tracker->open_from(a) == 0);
}

namespace {

// A blocking client socket on loopback with a receive timeout: tests never hang.
struct client {
  int fd = -1;
  explicit client(std::uint16_t port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~client() { ::close(fd); }
  void send(std::string_view s) { REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size())); }
  // What arrives until the peer closes or `until` has been seen (or 10 s pass).
  std::string read(std::string_view until = {}) {
    std::string out;
    char buf[4096];
    for (;;) {
      const auto n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
      if (!until.empty() && out.find(until) != std::string::npos) break;
    }
    return out;
  }
};

// A listener, with the REST API behind it, on its own io thread.
struct served {
  net::io_context io;
  scheduler sched{{}};
  fake_directory nodes;
  rest_api api{sched, nodes, {}, false};
  event_hub events{io.get_executor(), sched, nodes, std::chrono::milliseconds(1000)};
  listener http;
  std::thread thread;

  explicit served(std::size_t max_connections)
      : http(io.get_executor(), max_connections,
             http_services{api, sched, events, http_limits{}, std::make_shared<activity>()}) {
    http.listen({net::ip::make_address("127.0.0.1"), 0});
    thread = std::thread([this] {
      auto guard = net::make_work_guard(io);
      io.run();
    });
  }
  template <class F>
  auto on_io(F f) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto result = task.get_future();
    net::post(io, std::ref(task));
    REQUIRE(result.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    return result.get();
  }
  // Waits (bounded) until `pred` holds on the io thread.
  template <class F>
  bool eventually(F pred) {
    for (int i = 0; i < 1000; ++i) {
      if (on_io(pred)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  ~served() {
    on_io([this] { http.stop(); });
    io.stop();
    thread.join();
  }
};

constexpr std::string_view healthz = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

}  // namespace

TEST_CASE("at its limit the listener closes an idle connection to serve one that sends a request") {
  served node(2);
  client idle1(node.http.port());
  REQUIRE(node.eventually([&] { return node.http.open_connections() == 1; }));
  client idle2(node.http.port());
  REQUIRE(node.eventually([&] { return node.http.open_connections() == 2; }));
  client eager(node.http.port());
  eager.send(healthz);
  CHECK(eager.read().starts_with("HTTP/1.1 200 OK"));
  CHECK(idle1.read().empty());  // closed to make room: EOF, no answer
}

TEST_CASE("at its limit the listener answers 503 when every connection is busy in a request") {
  served node(2);
  // Two long-polls on a job that stays queued (no slots): both connections are in a request.
  const std::uint64_t id = node.on_io([&] {
    std::string body = R"({"source":"def f():\n    pass\n","function":"f"})";
    return node.sched.submit(parse_job_submission(body, [&](function_def d) { return node.sched.intern(std::move(d)); })
                                 .jobs.at(0))
        .id;
  });
  const std::string poll = "GET /v1/jobs/" + std::to_string(id) + "?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  client busy1(node.http.port()), busy2(node.http.port());
  busy1.send(poll);
  busy2.send(poll);
  REQUIRE(node.eventually([&] { return node.sched.find(id)->waiters.size() == 2; }));
  client late(node.http.port());
  late.send(healthz);
  const std::string answer = late.read();
  CHECK(answer.starts_with("HTTP/1.1 503 Service Unavailable"));
  CHECK(answer.find(R"({"error":{"message":"too many connections; retry later"}})") != std::string::npos);
  // The job ends: both long-polls are answered.
  node.on_io([&] {
    node.sched.cancel(id);
    return 0;
  });
  CHECK(busy1.read("cancelled").find("\"status\":\"cancelled\"") != std::string::npos);
  CHECK(busy2.read("cancelled").find("\"status\":\"cancelled\"") != std::string::npos);
}

TEST_CASE("a handshake proof is bound to the secret, the role and the order of both nonces") {
  const std::string d = peer::make_nonce(), a = peer::make_nonce();
  CHECK(d.size() == 64);
  CHECK(d != a);
  const auto acceptor = peer::proof_of("secret", "acceptor", d, a);
  CHECK(acceptor == peer::proof_of("secret", "acceptor", d, a));
  CHECK(acceptor != peer::proof_of("secret", "dialer", d, a));     // reflected to the other role
  CHECK(acceptor != peer::proof_of("secret", "acceptor", a, d));   // nonces swapped
  CHECK(acceptor != peer::proof_of("secret", "acceptor", d, peer::make_nonce()));  // replayed on a new challenge
  CHECK(acceptor != peer::proof_of("secreT", "acceptor", d, a));
  CHECK(peer::equal_in_constant_time(acceptor, std::string(acceptor)));
  CHECK_FALSE(peer::equal_in_constant_time(acceptor, acceptor.substr(1)));
}

TEST_CASE("an authenticated frame opens once, in order, for its own link and role only") {
  const std::string d(64, 'd'), a(64, 'a');
  peer::frame_authenticator sender("secret", d, a, "dialer");
  std::string wire;
  sender.append_message(wire, peer::msg::run, "first");
  sender.append_message(wire, peer::msg::run, "second");
  frame_reader reader;
  reader.feed(wire.data(), wire.size());
  std::string_view f1, f2;
  REQUIRE(reader.next(f1));
  const std::string first(f1);
  REQUIRE(reader.next(f2));
  const std::string second(f2);

  peer::message m{};
  SECTION("in order, each opens once") {
    peer::frame_authenticator receiver("secret", d, a, "dialer");
    REQUIRE(receiver.open(first, m));
    CHECK(m.type == peer::msg::run);
    CHECK(m.payload == "first");
    CHECK_FALSE(receiver.open(first, m));  // replayed
  }
  SECTION("out of order, the second does not open first") {
    peer::frame_authenticator receiver("secret", d, a, "dialer");
    CHECK_FALSE(receiver.open(second, m));
  }
  SECTION("another role, link or secret opens nothing") {
    CHECK_FALSE(peer::frame_authenticator("secret", d, a, "acceptor").open(first, m));  // reflected
    CHECK_FALSE(peer::frame_authenticator("secret", d, std::string(64, 'b'), "dialer").open(first, m));
    CHECK_FALSE(peer::frame_authenticator("other", d, a, "dialer").open(first, m));
  }
  SECTION("an altered frame does not open") {
    std::string altered = first;
    altered[1] ^= 1;
    CHECK_FALSE(peer::frame_authenticator("secret", d, a, "dialer").open(altered, m));
  }
}
