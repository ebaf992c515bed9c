#include "job_session.hpp"

#include "json_writer.hpp"
#include "log.hpp"
#include "node_server.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>

#include <charconv>

namespace ppgate {

namespace websocket = beast::websocket;
using namespace net::experimental::awaitable_operators;

job_session::job_session(node_server& server) : server_(server) {}

net::awaitable<void> job_session::run(beast::tcp_stream stream, http_request req) {
  auto self = shared_from_this();
  ws_stream ws(std::move(stream));
  ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  ws.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(http::field::server, "ppgate"); }));
  ws.read_message_max(server_.options().max_body_bytes);
  auto [ec] = co_await ws.async_accept(req, use_nothrow_awaitable);
  if (ec) co_return;
  wake_.emplace(co_await net::this_coro::executor, net::steady_timer::time_point::max());

  co_await (read_loop(ws) || write_loop(ws));

  closing_ = true;
  // Copy: each cancel ends a job, and job_ended() erases it from open_jobs_.
  const std::vector<std::uint64_t> abandoned(open_jobs_.begin(), open_jobs_.end());
  for (const auto id : abandoned) server_.jobs().cancel(id);
  if (!abandoned.empty())
    log::info("session closed; cancelled ", abandoned.size(), " of its unfinished jobs");
}

net::awaitable<void> job_session::read_loop(ws_stream& ws) {
  beast::flat_buffer buffer;
  for (;;) {
    auto [ec, n] = co_await ws.async_read(buffer, use_nothrow_awaitable);
    if (ec) break;
    std::string text = beast::buffers_to_string(buffer.data());
    buffer.consume(n);
    server_.touch();
    handle_message(text);
  }
  closing_ = true;
  wake_->cancel();
}

net::awaitable<void> job_session::write_loop(ws_stream& ws) {
  std::string message;
  for (;;) {
    while (replies_.empty() && finished_.empty()) {
      co_await wake_->async_wait(use_nothrow_awaitable);
      if (closing_) co_return;
    }
    // Replies first: the reply accepting a job is always queued before that job can end, so a
    // client never sees a result for an id it has not been given yet.
    if (!replies_.empty()) {
      message = std::move(replies_.front());
      replies_.pop_front();
    } else {
      message = "{\"results\":[";
      message += finished_;
      message += "]}";
      finished_.clear();
    }
    ws.text(true);
    auto [ec, n] = co_await ws.async_write(net::buffer(message), use_nothrow_awaitable);
    if (ec) co_return;
  }
}

void job_session::reply(std::string message) {
  replies_.push_back(std::move(message));
  wake_->cancel();
}

void job_session::job_ended(const job& j) {
  open_jobs_.erase(j.id);
  if (closing_) return;
  // Compact: the client knows everything else about its job already.
  if (!finished_.empty()) finished_ += ',';
  finished_ += "{\"id\":";
  finished_ += std::to_string(j.id);
  finished_ += ",\"status\":\"";
  finished_ += to_string(j.state);
  finished_ += "\",";
  finished_ += j.outcome;
  finished_ += '}';
  wake_->cancel();
}

void job_session::handle_message(std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  const char kind = first == std::string::npos ? '\0' : text[first];
  auto& sched = server_.jobs();
  if (kind == '[') {
    // A batch of jobs, as for POST /v1/jobs, which may also define and use fn_ids.
    try {
      auto submission = parse_job_submission(
          text, [&sched](function_def def) { return sched.intern(std::move(def)); }, &functions_);
      std::string accepted = "{\"accepted\":[";
      bool first_id = true;
      for (auto& spec : submission.jobs) {
        job& j = sched.submit(std::move(spec));
        // submit() may already have started it, but it cannot have ended: that takes a worker's reply.
        j.observer = weak_from_this();
        open_jobs_.insert(j.id);
        if (!first_id) accepted += ',';
        first_id = false;
        accepted += std::to_string(j.id);
      }
      accepted += "]}";
      reply(std::move(accepted));
    } catch (const request_error& e) {
      reply(json_error_body(e.what()));
    }
    return;
  }
  // {"cancel": ID}
  constexpr std::string_view cancel_prefix = "{\"cancel\":";
  std::string_view rest(text);
  rest.remove_prefix(std::min(rest.size(), first == std::string::npos ? rest.size() : first));
  std::uint64_t id = 0;
  if (rest.starts_with(cancel_prefix)) {
    rest.remove_prefix(cancel_prefix.size());
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), id);
    std::string_view tail(p, static_cast<std::size_t>(rest.data() + rest.size() - p));
    while (!tail.empty() && (tail.front() == ' ' || tail.back() == ' ' || tail.back() == '\n'))
      tail = tail.front() == ' ' ? tail.substr(1) : tail.substr(0, tail.size() - 1);
    if (ec == std::errc() && tail == "}") {
      const auto result = sched.cancel(id);
      const char* word = result == scheduler::cancel_result::cancelled          ? "cancelled"
                         : result == scheduler::cancel_result::already_finished ? "already_ended"
                                                                                 : "not_found";
      reply("{\"cancel\":" + std::to_string(id) + ",\"outcome\":\"" + word + "\"}");
      return;
    }
  }
  reply(json_error_body("a session message is a JSON array of jobs or {\"cancel\": ID}"));
}

}  // namespace ppgate
