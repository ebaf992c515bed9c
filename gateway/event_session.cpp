#include "event_session.hpp"

#include "event_hub.hpp"
#include "json_writer.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>

#include <utility>

namespace ppgate {

namespace websocket = beast::websocket;
using namespace net::experimental::awaitable_operators;

event_session::event_session(event_hub& hub, bool wants_jobs) : hub_(hub), wants_jobs_(wants_jobs) {}

net::awaitable<void> event_session::run(beast::tcp_stream stream, http_request req) {
  auto self = shared_from_this();
  ws_stream ws(std::move(stream));
  ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  ws.set_option(websocket::stream_base::decorator(decorate_websocket_handshake));
  ws.read_message_max(64 * 1024);  // subscribers have nothing big to say
  auto [ec] = co_await ws.async_accept(req, use_nothrow_awaitable);
  if (ec) co_return;
  wake_.emplace(co_await net::this_coro::executor, net::steady_timer::time_point::max());
  ws_ = &ws;
  hub_.add(self);
  co_await (read_loop(ws) || write_loop(ws));
  closing_ = true;
  ws_ = nullptr;
}

net::awaitable<void> event_session::read_loop(ws_stream& ws) {
  // Reading keeps pings and the close handshake going; what a subscriber sends is ignored.
  beast::flat_buffer buffer;
  for (;;) {
    auto [ec, n] = co_await ws.async_read(buffer, use_nothrow_awaitable);
    if (ec) break;
    buffer.consume(n);
  }
  closing_ = true;
  wake_->cancel();
}

net::awaitable<void> event_session::write_loop(ws_stream& ws) {
  std::string message;
  for (;;) {
    while (!snapshot_ && events_.empty() && dropped_ == 0) {
      co_await wake_->async_wait(use_nothrow_awaitable);
      if (closing_) co_return;
    }
    std::shared_ptr<const std::string> snapshot;
    if (!events_.empty() || dropped_ > 0) {
      message.clear();
      json_writer(message)
          .begin_object()
          .member("type", "jobs")
          .key("events")
          .begin_array()
          .raw_items(events_)
          .end_array()
          .member("dropped", dropped_)
          .end_object();
      events_.clear();
      pending_events_ = 0;
      dropped_ = 0;
    } else {
      snapshot = std::move(snapshot_);  // kept alive by this frame while it is written
    }
    writing_since_ = steady_clock::now();
    ws.text(true);
    // Hoisted out of the co_await expression: g++ 12 mishandles temporaries there.
    const net::const_buffer payload = snapshot ? net::buffer(*snapshot) : net::buffer(std::as_const(message));
    auto [ec, n] = co_await ws.async_write(payload, use_nothrow_awaitable);
    writing_since_.reset();
    if (ec) co_return;
  }
}

void event_session::wake() {
  if (wake_) wake_->cancel();
}

void event_session::offer_snapshot(std::shared_ptr<const std::string> snapshot) {
  if (closing_) return;
  snapshot_ = std::move(snapshot);  // an unsent older one is simply replaced
  wake();
}

void event_session::offer_job_event(std::string_view event_json) {
  if (closing_) return;
  if (pending_events_ >= max_pending_events) {
    ++dropped_;  // the subscriber is behind; it learns how many it missed
    return;
  }
  if (!events_.empty()) events_ += ',';
  events_ += event_json;
  ++pending_events_;
  wake();
}

void event_session::drop_if_stalled(steady_clock::time_point now) {
  if (ws_ == nullptr || !writing_since_ || now - *writing_since_ < stalled_after) return;
  // Closing the socket ends the stuck write, and with it the session.
  closing_ = true;
  boost::system::error_code ignored;
  beast::get_lowest_layer(*ws_).socket().close(ignored);
}

}  // namespace ppgate
