#include "http_session.hpp"

#include "event_session.hpp"
#include "job_session.hpp"
#include "request_head.hpp"
#include "rest_api.hpp"

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include <algorithm>
#include <cctype>
#include <optional>

namespace ppgate {

namespace {

http::status status_for_read_error(const boost::system::error_code& ec) {
  if (ec == http::error::body_limit) return http::status::payload_too_large;
  if (ec == http::error::header_limit) return http::status::request_header_fields_too_large;
  return http::status::bad_request;
}

// Closes after a refusal without reading the body into memory: the answer goes out first, and
// what the client still sends is read and dropped for a moment (at most 1 s, 1 MiB), so the close
// does not reset the connection before the client has read the answer.
net::awaitable<void> linger(beast::tcp_stream& stream) {
  boost::system::error_code ec;
  stream.socket().shutdown(net::ip::tcp::socket::shutdown_send, ec);
  stream.expires_after(std::chrono::seconds(1));
  char sink[16 * 1024];
  std::size_t dropped = 0;
  while (!ec && dropped < 1024 * 1024) {
    std::size_t n = 0;
    std::tie(ec, n) = co_await stream.async_read_some(net::buffer(sink), use_nothrow_awaitable);
    dropped += n;
  }
  stream.socket().close(ec);
}

}  // namespace

net::awaitable<void> run_http_session(net::ip::tcp::socket socket, net::ip::address from,
                                      std::shared_ptr<connection_tracker> connections, http_services services) {
  const connection_tracker::scoped counted(connections, from);
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  const http_limits& opts = services.limits;

  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(opts.max_header_bytes));
    parser.body_limit(opts.max_body_bytes);

    // A connection may stay idle for the idle timeout; once a request has begun, its head must
    // follow within the (short) header timeout and the rest within the idle timeout: slow senders
    // are cut off. Until its head has arrived, the connection may be closed to make room for
    // another (listener).
    std::optional<connection_tracker::waiting> waiting_for_head(std::in_place, *connections,
                                                                stream.socket(), from);
    boost::system::error_code ec;
    std::size_t n = 0;
    if (buffer.size() == 0) {
      stream.expires_after(opts.idle_timeout);
      std::tie(ec, n) = co_await stream.async_read_some(buffer.prepare(16 * 1024), use_nothrow_awaitable);
      buffer.commit(n);
    }
    if (!ec) {
      stream.expires_after(opts.header_timeout);
      std::tie(ec, n) = co_await http::async_read_header(stream, buffer, parser, use_nothrow_awaitable);
    }
    waiting_for_head.reset();
    if (!ec) stream.expires_after(opts.idle_timeout);
    if (!ec) {
      // Access is decided on the head, before any of the body is read: a stranger's upload costs
      // this node nothing (the connection closes, the body unread).
      auto& head = parser.get();
      const auto [path, query] = split_target(head.target());
      if (beast::websocket::is_upgrade(head) && (path == "/v1/session" || path == "/v1/events")) {
        // Browsers cannot set headers on a WebSocket: both also take the token as ?access_token=.
        const auto token = query_param(query, "access_token");
        if (token && head[http::field::authorization].empty())
          head.set(http::field::authorization, "Bearer " + std::string(*token));
      }
      std::optional<http_response> denied = services.api.check_access(head, path);
      if (!denied && beast::websocket::is_upgrade(head) && !valid_websocket_key(head["Sec-WebSocket-Key"]))
        denied = make_error(http::status::bad_request,
                            "Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455)", head.version());
      if (denied) {
        denied->keep_alive(false);
        denied->prepare_payload();
        co_await http::async_write(stream, *denied, use_nothrow_awaitable);
        co_await linger(stream);
        co_return;
      }
    }
    if (!ec && parser.get()[http::field::expect] == "100-continue") {
      // curl waits a second for this before sending a large body.
      http::response<http::empty_body> proceed{http::status::continue_, parser.get().version()};
      std::tie(ec, n) = co_await http::async_write(stream, proceed, use_nothrow_awaitable);
    }
    if (!ec && !parser.is_done())
      std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, use_nothrow_awaitable);
    if (ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted)
      break;
    if (ec) {
      // The request is malformed or too large: answer, then close, since the stream position
      // is unknown.
      auto res = make_error(status_for_read_error(ec), "bad request: " + ec.message(), 11);
      res.keep_alive(false);
      stream.expires_after(opts.idle_timeout);
      co_await http::async_write(stream, res, use_nothrow_awaitable);
      break;
    }

    services.seen->touch();
    http_request req = parser.release();
    stream.expires_never();  // ?wait=S long-polls are bounded by S instead
    const auto [path, query] = split_target(req.target());
    if (beast::websocket::is_upgrade(req) && (path == "/v1/session" || path == "/v1/events")) {
      // Access was checked on the head. The connection becomes a WebSocket; the session owns it
      // from here on.
      if (path == "/v1/session") {
        co_await std::make_shared<job_session>(services.sched, opts, services.seen)
            ->run(std::move(stream), std::move(req));
      } else {
        const bool jobs = query_param(query, "jobs").value_or("0") == "1";
        co_await std::make_shared<event_session>(services.events, jobs)->run(std::move(stream), std::move(req));
      }
      co_return;
    }
    http_response res = co_await services.api.handle(req);
    res.keep_alive(req.keep_alive() && res.keep_alive());
    res.prepare_payload();
    stream.expires_after(opts.idle_timeout);
    auto [write_ec, written] = co_await http::async_write(stream, res, use_nothrow_awaitable);
    if (write_ec || !res.keep_alive()) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
}

}  // namespace ppgate
