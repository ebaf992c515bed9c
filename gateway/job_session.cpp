#include "job_session.hpp"

#include "job_parser.hpp"
#include "json_writer.hpp"
#include "log.hpp"
#include "shared_memory.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>

namespace ppgate {

namespace websocket = beast::websocket;
using namespace net::experimental::awaitable_operators;

namespace {

// What a session's client is told (docs/rest.md, "Sessions"): {"results":[...]} with compact
// results (the client knows everything else about its jobs), and {"rejected":[tags],"error":...}
// for a refused batch.
class session_json_encoding final : public tagged_jobs::encoding {
 public:
  void append_result(std::string& results, std::int64_t tag, const job& j) const override {
    json_writer(results, /*after_items=*/!results.empty())
        .begin_object()
        .member("tag", tag)
        .member("id", j.id)
        .member("status", to_string(j.state))
        .member("run_seconds", j.run_seconds)
        .raw_items(j.outcome)
        .end_object();
  }
  std::string refuse_batch(std::string&, const std::vector<std::int64_t>& tags,
                           std::string_view why) const override {
    std::string rejected;
    json_writer w(rejected);
    w.begin_object().key("rejected").begin_array();
    for (const auto tag : tags) w.value(tag);
    w.end_array().key("error").begin_object().member("message", why).end_object().end_object();
    return rejected;
  }
  std::string results_message(std::string&& results) const override {
    std::string out;
    json_writer(out).begin_object().key("results").begin_array().raw_items(results).end_array().end_object();
    return out;
  }
};

const session_json_encoding session_json;

}  // namespace

job_session::job_session(scheduler& sched, const http_limits& limits, std::shared_ptr<activity> seen)
    : sched_(sched), limits_(limits), activity_(std::move(seen)) {}

net::awaitable<void> job_session::run(beast::tcp_stream stream, http_request req) {
  auto self = shared_from_this();
  // Shared memory for a client that shares this node's /dev/shm (it says so by naming it as the
  // node does), on loopback: a remote client's names would mean nothing here.
  boost::system::error_code ec_endpoint;
  const auto peer = stream.socket().remote_endpoint(ec_endpoint);
  const auto claimed = req[shared_memory_header];
  if (!ec_endpoint && peer.address().is_loopback() && !claimed.empty() &&
      claimed == shared_memory::host_identity())
    shm_prefix_ = shared_memory::new_session_prefix();
  ws_stream ws(std::move(stream));
  ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  ws.set_option(websocket::stream_base::decorator([this](http_response& res) {
    decorate_websocket_handshake(res);
    if (res.result() != http::status::switching_protocols) return;
    // What the client must know before it sends: the largest message taken, and where its big
    // arguments may go instead.
    res.set(max_message_header, std::to_string(limits_.max_body_bytes));
    if (!shm_prefix_.empty()) res.set(shared_memory_header, shm_prefix_);
  }));
  ws.read_message_max(limits_.max_body_bytes);
  auto [ec] = co_await ws.async_accept(req, use_nothrow_awaitable);
  if (ec) co_return;
  wake_.emplace(co_await net::this_coro::executor, net::steady_timer::time_point::max());
  drained_.emplace(co_await net::this_coro::executor);
  jobs_ = std::make_shared<tagged_jobs>(sched_, [this] { wake_->cancel(); }, session_json);
  if (!shm_prefix_.empty()) jobs_->offer_shared_memory(shm_prefix_);

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
      log::warn("a session has read none of its results for ", limits_.idle_timeout.count(),
                " s; closing it");
      beast::get_lowest_layer(ws).close();
      break;
    }
    if (closing_) break;
    auto [ec, n] = co_await ws.async_read(buffer, use_nothrow_awaitable);
    if (ec) break;
    std::string text = beast::buffers_to_string(buffer.data());
    buffer.consume(n);
    activity_->touch();
    handle_message(text);
  }
  closing_ = true;
  wake_->cancel();
  drained_->cancel();
}

net::awaitable<bool> job_session::wait_for_drain() {
  while (!closing_ && jobs_->unsent_bytes() + writing_bytes_ > max_unsent_bytes) {
    drained_->expires_after(limits_.idle_timeout);
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
    activity_->session_replied();
  }
}

void job_session::handle_message(std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    // An accepted batch gets no answer: each job's result, carrying its tag, is the answer.
    jobs_->submit_batch(text);
    return;
  }
  jobs_->control(text);
}

}  // namespace ppgate
