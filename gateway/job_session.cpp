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

#include <array>

#include <simdjson.h>

namespace ppgate {

namespace websocket = beast::websocket;
using namespace net::experimental::awaitable_operators;

namespace {

// [NUL][4-byte little-endian length H][H bytes of JSON]: the start of a binary message
// (docs/rest.md, "Binary messages"); the NUL, which no JSON text has, tells the writer, which sends
// the rest followed by the session's attachments.
std::string binary_message_head(std::string_view header) {
  return '\0' + shared_memory::binary_message_length(header.size()) + std::string(header);
}

// What a session's client is told (docs/rest.md, "Sessions"): {"results":[...]} with compact
// results (the client knows everything else about its jobs), and {"rejected":[tags],"error":...}
// for a refused batch. For a client that takes binary messages, a big result a worker left in a
// file is read into the message's attachments (docs/rest.md, "Binary messages").
class session_json_encoding final : public tagged_jobs::encoding {
 public:
  // `attachments`: the session's, for the next results message; null: results stay as they are.
  explicit session_json_encoding(std::string* attachments) : attachments_(attachments) {}

  void append_result(std::string& results, std::int64_t tag, const job& j) const override {
    std::string_view outcome = j.outcome;
    std::string attached;  // the result as parts of the attachments, when it was in a file
    job_state state = j.state;
    if (attachments_ != nullptr && state == job_state::done && outcome.starts_with(shared_memory::result_in_file)) {
      try {
        const auto start = outcome.find('{'), end = outcome.find('}');  // (its parts hold no braces)
        attached = shared_memory::attach_result(outcome.substr(start, end - start + 1), *attachments_);
        outcome.remove_prefix(end + 1);  // ,"stdout":...,"stderr":...
      } catch (const std::exception& e) {
        state = job_state::failed;
        attached = error_outcome("SharedMemoryError", std::string("the result was lost: ") + e.what());
        outcome.remove_prefix(outcome.find('}') + 1);
      }
    }
    json_writer w(results, /*after_items=*/!results.empty());
    w.begin_object()
        .member("tag", tag)
        .member("id", j.id)
        .member("status", to_string(state))
        .member("run_seconds", j.run_seconds);
    if (attached.empty()) {
      w.raw_items(outcome);
    } else {
      results += ',';
      results += attached;
      results += outcome;
    }
    w.end_object();
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
    std::string header;
    json_writer(header).begin_object().key("results").begin_array().raw_items(results).end_array().end_object();
    if (attachments_ == nullptr || attachments_->empty()) return header;
    return binary_message_head(header);  // the writer sends the attachments after it
  }

 private:
  std::string* attachments_;
};

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
  files_prefix_ = shared_memory::new_session_prefix();
  shm_offered_ = !ec_endpoint && peer.address().is_loopback() && !claimed.empty() &&
                 claimed == shared_memory::host_identity();
  binary_results_ = !shm_offered_ && req[binary_header] == "1";
  ws_stream ws(std::move(stream));
  ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  ws.set_option(websocket::stream_base::decorator([this](http_response& res) {
    decorate_websocket_handshake(res);
    if (res.result() != http::status::switching_protocols) return;
    // What the client must know before it sends: the largest message taken, and where its big
    // arguments may go instead.
    res.set(max_message_header, std::to_string(limits_.max_body_bytes));
    res.set(binary_header, "1");  // binary messages are taken (and sent, when asked for)
    if (shm_offered_) res.set(shared_memory_header, files_prefix_);
  }));
  ws.read_message_max(limits_.max_body_bytes);
  ws.auto_fragment(false);  // a message is one frame: the client reads it straight into one buffer
  auto [ec] = co_await ws.async_accept(req, use_nothrow_awaitable);
  if (ec) co_return;
  wake_.emplace(co_await net::this_coro::executor, net::steady_timer::time_point::max());
  drained_.emplace(co_await net::this_coro::executor);
  encoding_ = std::make_unique<session_json_encoding>(binary_results_ ? &attachments_ : nullptr);
  jobs_ = std::make_shared<tagged_jobs>(sched_, [this] { wake_->cancel(); }, *encoding_);
  // Big results go to files for the client to map, or for the encoding to attach.
  jobs_->use_files(files_prefix_, shm_offered_,
                   shm_offered_ || binary_results_ ? tagged_jobs::results_in_files::always
                                                   : tagged_jobs::results_in_files::never);

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
    activity_->touch();
    if (ws.got_binary()) {
      const auto data = buffer.data();
      handle_binary(std::string_view(static_cast<const char*>(data.data()), data.size()));
    } else {
      std::string text = beast::buffers_to_string(buffer.data());
      handle_message(text, nullptr);
    }
    buffer.consume(n);
    if (buffer.capacity() > 1024 * 1024) buffer.shrink_to_fit();  // a big message is not kept
  }
  closing_ = true;
  wake_->cancel();
  drained_->cancel();
}

net::awaitable<bool> job_session::wait_for_drain() {
  while (!closing_ && jobs_->unsent_bytes() + attachments_.size() + writing_bytes_ > max_unsent_bytes) {
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
    // A binary message is marked by a leading NUL, which no JSON text has; its attachments are
    // the session's so far (results that end meanwhile start the next message's).
    const bool binary = !message.empty() && message.front() == '\0';
    std::string attachments;
    if (binary) attachments.swap(attachments_);
    ws.binary(binary);
    writing_bytes_ = message.size() + attachments.size();
    const std::array<net::const_buffer, 2> parts{net::buffer(message.data() + binary, message.size() - binary),
                                                 net::buffer(attachments)};
    auto [ec, n] = co_await ws.async_write(parts, use_nothrow_awaitable);
    writing_bytes_ = 0;
    if (ec) co_return;
    drained_->cancel();  // progress: a reader held back by backpressure looks again
    activity_->session_replied();
  }
}

void job_session::handle_message(std::string& text, std::shared_ptr<const shared_memory::node_file> attached) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    // An accepted batch gets no answer: each job's result, carrying its tag, is the answer.
    jobs_->submit_batch(text, std::move(attached));
    return;
  }
  jobs_->control(text, std::move(attached));
}

void job_session::handle_binary(std::string_view message) {
  shared_memory::binary_message parts;
  try {
    parts = shared_memory::split_binary_message(message);
  } catch (const shared_memory::error& e) {
    jobs_->refuse(e.what());
    return;
  }
  std::string json(parts.json);
  std::shared_ptr<const shared_memory::node_file> file;
  if (!parts.attachments.empty()) {
    try {
      // Written once for the workers to map; removed when the last job or value taking it ends.
      file = shared_memory::write_node_file(files_prefix_ + "n" + std::to_string(++files_written_), parts.attachments);
    } catch (const shared_memory::error& e) {
      const auto first = json.find_first_not_of(" \t\r\n");
      if (first != std::string::npos && json[first] == '[') jobs_->reject(json, e.what());
      else jobs_->refuse(e.what());
      return;
    }
  }
  handle_message(json, std::move(file));
}

}  // namespace ppgate
