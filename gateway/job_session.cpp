#include "job_session.hpp"

#include "job_request.hpp"
#include "log.hpp"
#include "node_server.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>

namespace ppgate {

namespace websocket = beast::websocket;
using namespace net::experimental::awaitable_operators;

job_session::job_session(node_server& server) : server_(server) {}

net::awaitable<void> job_session::run(beast::tcp_stream stream, http_request req) {
  auto self = shared_from_this();
  ws_stream ws(std::move(stream));
  ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  ws.set_option(websocket::stream_base::decorator(decorate_websocket_handshake));
  ws.read_message_max(server_.options().max_body_bytes);
  auto [ec] = co_await ws.async_accept(req, use_nothrow_awaitable);
  if (ec) co_return;
  wake_.emplace(co_await net::this_coro::executor, net::steady_timer::time_point::max());
  drained_.emplace(co_await net::this_coro::executor);
  jobs_ = std::make_shared<tagged_jobs>(server_.jobs(), [this] { wake_->cancel(); },
                                        tagged_jobs::format::session_json);

  co_await (read_loop(ws) || write_loop(ws));

  closing_ = true;
  if (const auto abandoned = jobs_->open_jobs(); abandoned > 0)
    log::info("session closed; cancelling ", abandoned, " of its unfinished jobs");
  jobs_->cancel_all();
}

net::awaitable<void> job_session::read_loop(ws_stream& ws) {
  beast::flat_buffer buffer;
  for (;;) {
    if (!co_await wait_for_drain()) {
      log::warn("a session has read none of its results for ", server_.options().idle_timeout.count(),
                " s; closing it");
      beast::get_lowest_layer(ws).close();
      break;
    }
    if (closing_) break;
    auto [ec, n] = co_await ws.async_read(buffer, use_nothrow_awaitable);
    if (ec) break;
    std::string text = beast::buffers_to_string(buffer.data());
    buffer.consume(n);
    server_.touch();
    handle_message(text);
  }
  closing_ = true;
  wake_->cancel();
  drained_->cancel();
}

net::awaitable<bool> job_session::wait_for_drain() {
  while (!closing_ && jobs_->unsent_bytes() + writing_bytes_ > max_unsent_bytes) {
    drained_->expires_after(server_.options().idle_timeout);
    auto [ec] = co_await drained_->async_wait(use_nothrow_awaitable);
    if (!ec) co_return false;  // the timer ran out: no write completed meanwhile
  }
  co_return true;
}

net::awaitable<void> job_session::write_loop(ws_stream& ws) {
  std::string message;
  for (;;) {
    while (!jobs_->has_output()) {
      co_await wake_->async_wait(use_nothrow_awaitable);
      if (closing_) co_return;
    }
    message = jobs_->take_output();
    ws.text(true);
    writing_bytes_ = message.size();
    auto [ec, n] = co_await ws.async_write(net::buffer(message), use_nothrow_awaitable);
    writing_bytes_ = 0;
    if (ec) co_return;
    drained_->cancel();  // progress: a reader held back by backpressure looks again
    server_.session_replied();
  }
}

void job_session::handle_message(std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    // An accepted batch gets no answer: each job's result, carrying its tag, is the answer.
    jobs_->submit_batch(text);
    return;
  }
  try {
    jobs_->cancel(parse_cancel_message(text));
  } catch (const request_error& e) {
    jobs_->refuse(e.what());
  }
}

}  // namespace ppgate
