// One subscriber of GET /v1/events (WebSocket): it receives stats snapshots and, if it asked
// (?jobs=1), job events. Its outbox is bounded: an unsent snapshot is replaced by the newer one,
// job events beyond a limit are counted as dropped, and a client that stops reading for long is
// disconnected. Nothing it does slows the scheduler or other clients.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "http.hpp"
#include "job.hpp"

#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/stream.hpp>

#include <memory>
#include <optional>
#include <string>

namespace ppgate {

class event_hub;

class event_session : public std::enable_shared_from_this<event_session> {
 public:
  static constexpr std::size_t max_pending_events = 5000;
  static constexpr std::chrono::seconds stalled_after{10};

  event_session(event_hub& hub, bool wants_jobs);

  // Completes the handshake for `req` and serves the subscriber until it leaves.
  net::awaitable<void> run(beast::tcp_stream stream, http_request req);

  bool wants_jobs() const { return wants_jobs_; }
  void offer_snapshot(std::shared_ptr<const std::string> snapshot);
  void offer_job_event(std::string_view event_json);
  // Disconnects the subscriber if a write has been stuck for `stalled_after`.
  void drop_if_stalled(steady_clock::time_point now);

 private:
  using ws_stream = beast::websocket::stream<beast::tcp_stream>;

  net::awaitable<void> read_loop(ws_stream& ws);
  net::awaitable<void> write_loop(ws_stream& ws);
  void wake();

  event_hub& hub_;
  bool wants_jobs_;
  std::shared_ptr<const std::string> snapshot_;  // the newest one not yet sent
  std::string events_;                          // pending job events, joined by ','
  std::size_t pending_events_ = 0;
  std::uint64_t dropped_ = 0;
  std::optional<net::steady_timer> wake_;
  std::optional<steady_clock::time_point> writing_since_;
  ws_stream* ws_ = nullptr;  // borrowed from run()'s frame while it runs
  bool closing_ = false;
};

}  // namespace ppgate
