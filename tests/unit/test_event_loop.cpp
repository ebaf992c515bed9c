#include "event_loop.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <catch2/catch.hpp>

#include <chrono>

using namespace ppgate;
using namespace std::chrono_literals;

TEST_CASE("run_event_loop runs handlers and timers while polling, and returns when work runs out") {
  net::io_context io(1);
  int posted = 0;
  bool fired = false;
  net::post(io, [&] { ++posted; });
  net::steady_timer timer(io, 20ms);
  timer.async_wait([&](auto) { fired = true; });
  std::size_t polls = 0;
  // Polls until the timer has fired: polling must not keep a timer from expiring.
  run_event_loop(io, [&] {
    ++polls;
    return !fired;
  });
  CHECK(posted == 1);
  CHECK(fired);
  CHECK(polls > 0);
  CHECK(io.stopped());
}

TEST_CASE("run_event_loop returns when the work runs out even if it is asked to keep polling") {
  net::io_context io(1);
  int posted = 0;
  net::post(io, [&] { ++posted; });
  run_event_loop(io, [] { return true; });
  CHECK(posted == 1);
}

TEST_CASE("run_event_loop returns on stop() while polling, with work still pending") {
  net::io_context io(1);
  net::steady_timer never(io, std::chrono::hours(1));
  never.async_wait([](auto) {});
  net::steady_timer stopper(io, 10ms);
  stopper.async_wait([&](auto) { io.stop(); });
  run_event_loop(io, [] { return true; });
  CHECK(io.stopped());
}

TEST_CASE("run_event_loop sleeps for events when it is not asked to poll") {
  net::io_context io(1);
  bool fired = false;
  net::steady_timer timer(io, 10ms);
  timer.async_wait([&](auto) { fired = true; });
  std::size_t polls = 0;
  run_event_loop(io, [&] {
    ++polls;
    return false;
  });
  CHECK(fired);
  // Without polling, the loop asks once per idle moment, then sleeps until the timer: a handful
  // of calls, not a spin.
  CHECK(polls < 100);
}
