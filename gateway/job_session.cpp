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

namespace {

// The "tag" values of a batch the parser refused, found leniently (the batch may be malformed),
// as a JSON array: the client fails those jobs with the parser's message.
std::string tags_of_batch(std::string_view text) {
  std::string out = "[";
  constexpr std::string_view key = "\"tag\":";
  for (auto at = text.find(key); at != std::string_view::npos; at = text.find(key, at + key.size())) {
    std::int64_t tag = 0;
    const char* begin = text.data() + at + key.size();
    auto [p, ec] = std::from_chars(begin, text.data() + text.size(), tag);
    if (ec != std::errc()) continue;
    if (out.size() > 1) out += ',';
    out += std::to_string(tag);
  }
  out += ']';
  return out;
}

}  // namespace

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
  std::vector<std::uint64_t> abandoned;
  for (const auto& [id, tag] : open_jobs_) abandoned.push_back(id);
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
  const auto open = open_jobs_.find(j.id);
  if (open == open_jobs_.end()) return;
  const std::int64_t tag = open->second;
  open_jobs_.erase(open);
  by_tag_.erase(tag);
  if (closing_) return;
  // Compact: the client knows everything else about its job already.
  if (!finished_.empty()) finished_ += ',';
  finished_ += "{\"tag\":";
  finished_ += std::to_string(tag);
  finished_ += ",\"id\":";
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
    // A batch of jobs, as for POST /v1/jobs, each with the client's "tag" and maybe an fn_id.
    // An accepted batch gets no answer: each job's result, carrying its tag, is the answer.
    try {
      auto submission = parse_job_submission(
          text, [&sched](function_def def) { return sched.intern(std::move(def)); }, &functions_);
      for (std::size_t i = 0; i < submission.jobs.size(); ++i) {
        job& j = sched.submit(std::move(submission.jobs[i]));
        // submit() may already have started it, but it cannot have ended: that takes a worker's reply.
        j.observer = weak_from_this();
        open_jobs_.emplace(j.id, submission.tags[i]);
        by_tag_[submission.tags[i]] = j.id;
      }
    } catch (const request_error& e) {
      std::string rejected = "{\"rejected\":";
      rejected += tags_of_batch(text);
      rejected += ",\"error\":{\"message\":";
      append_json_string(rejected, e.what());
      rejected += "}}";
      reply(std::move(rejected));
    }
    return;
  }
  // {"cancel": TAG}
  constexpr std::string_view cancel_prefix = "{\"cancel\":";
  std::string_view rest(text);
  rest.remove_prefix(first == std::string::npos ? rest.size() : first);
  if (rest.starts_with(cancel_prefix)) {
    rest.remove_prefix(cancel_prefix.size());
    std::int64_t tag = 0;
    auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), tag);
    if (ec == std::errc() && std::string_view(p, static_cast<std::size_t>(rest.data() + rest.size() - p)) == "}") {
      // A job that already ended is no longer in by_tag_: its result is on its way.
      if (auto it = by_tag_.find(tag); it != by_tag_.end()) sched.cancel(it->second);
      return;
    }
  }
  reply(json_error_body("a session message is a JSON array of jobs or {\"cancel\":TAG}"));
}

}  // namespace ppgate
