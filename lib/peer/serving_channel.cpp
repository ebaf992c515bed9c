#include "serving_channel.hpp"

#include "json_writer.hpp"
#include "log.hpp"
#include "shared_memory.hpp"

#include <charconv>
#include <utility>

namespace ppgate {

namespace {

// A framed peer `result` message: "<tag> <state> <run seconds>\n<outcome members>".
void append_peer_result(std::string& frames, std::int64_t tag, std::string_view state, double run_seconds,
                        std::string_view outcome) {
  std::string body = std::to_string(tag);
  body += ' ';
  body += state;
  body += ' ';
  append_json_number(body, run_seconds);
  body += '\n';
  body += outcome;
  peer::append_message(frames, peer::msg::result, body);
}

// What a dialer is told of the jobs it sent: peer `result` frames, a refused batch included (each
// of its jobs ends `refused`, which the dialer takes as failed, with the reason). Its jobs run on this node's own workers only.
class peer_result_encoding final : public tagged_jobs::encoding {
 public:
  bool local_only() const override { return true; }
  void append_result(std::string& results, std::int64_t tag, const job& j) const override {
    const std::string_view outcome = j.outcome;
    if (j.state == job_state::done && outcome.starts_with(shared_memory::result_in_file)) {
      // A big result the worker left in a file: its bytes go as the attachments of a
      // result_attached frame, so the dialer gets them without base64.
      std::string attachments, body;
      try {
        const auto start = outcome.find('{'), end = outcome.find('}');  // (its parts hold no braces)
        body = std::to_string(tag) + " done ";
        append_json_number(body, j.run_seconds);
        body += '\n';
        body += shared_memory::attach_result(outcome.substr(start, end - start + 1), attachments);
        body += outcome.substr(end + 1);
      } catch (const shared_memory::error& e) {
        append_peer_result(results, tag, "failed", j.run_seconds,
                           error_outcome("SharedMemoryError", std::string("the result was lost: ") + e.what()));
        return;
      }
      std::string message = shared_memory::binary_message_length(body.size());
      message += body;
      message += attachments;
      peer::append_message(results, peer::msg::result_attached, message);
      return;
    }
    append_peer_result(results, tag, to_string(j.state), j.run_seconds, j.outcome);
  }
  std::string refuse_batch(std::string& results, const std::vector<std::int64_t>& tags,
                           std::string_view why) const override {
    for (const auto tag : tags)
      append_peer_result(results, tag, peer::refused_result, 0, error_outcome("SubmitError", why));
    return {};
  }
  std::string results_message(std::string&& results) const override { return std::move(results); }
  // Draining: the dialer runs these elsewhere.
  std::string hand_back_batch(std::string& results, const std::vector<std::int64_t>& tags,
                              std::string_view why) const override {
    for (const auto tag : tags)
      append_peer_result(results, tag, peer::handed_back_result, 0, error_outcome("HandedBack", why));
    return {};
  }
  void append_handed_back(std::string& results, std::int64_t tag, const job& j) const override {
    append_peer_result(results, tag, peer::handed_back_result, 0, j.outcome);
  }
};

const peer_result_encoding peer_results;

}  // namespace

serving_channel::serving_channel(std::unique_ptr<peer_stream> stream, const peer_settings& settings,
                                 scheduler& sched)
    : peer_channel(std::move(stream), settings), sched_(sched) {}

net::awaitable<void> serving_channel::serve_jobs() {
  jobs_ = std::make_shared<tagged_jobs>(sched_, [this] { send_frames(jobs_->take_output()); }, peer_results);
  // For the attachments of run_attached batches; removed with the link.
  files_prefix_ = shared_memory::new_session_prefix();
  jobs_->use_files(files_prefix_, false, tagged_jobs::results_in_files::when_asked);
  co_await run();
}

std::size_t serving_channel::drain(std::string_view why) {
  if (!jobs_ || closed()) return 0;
  send(peer::msg::capacity, "0");  // the other node sends no more
  return jobs_->hand_back_queued(why);
}

void serving_channel::capacity_changed(std::size_t slots) {
  if (jobs_ && !closed()) send(peer::msg::capacity, std::to_string(slots));  // only once serving
}

void serving_channel::on_message(const peer::message& m) {
  switch (m.type) {
    case peer::msg::run: {
      std::string batch(m.payload);
      jobs_->submit_batch(batch);
      break;
    }
    case peer::msg::run_attached: {
      std::shared_ptr<const shared_memory::node_file> file;
      std::string batch;
      try {
        const auto parts = shared_memory::split_binary_message(m.payload);
        batch = std::string(parts.json);
        if (!parts.attachments.empty())
          file = shared_memory::write_node_file(files_prefix_ + "n" + std::to_string(++files_written_),
                                                parts.attachments);
      } catch (const shared_memory::error& e) {
        // Each job it holds is answered (its tags are found however broken the batch is).
        std::string whole = batch.empty() ? std::string(m.payload) : batch;
        jobs_->reject(whole, e.what());
        break;
      }
      jobs_->submit_batch(batch, std::move(file));
      break;
    }
    case peer::msg::cancel: {
      std::int64_t tag = 0;
      std::from_chars(m.payload.data(), m.payload.data() + m.payload.size(), tag);
      jobs_->cancel(tag);
      break;
    }
    default: log::warn("peer ", peer_name_, " sent an unexpected message"); break;
  }
}

void serving_channel::on_closed() {
  if (jobs_) {
    if (jobs_->open_jobs() > 0)
      log::info("peer ", peer_name_, " left; cancelling its ", jobs_->open_jobs(), " unfinished jobs");
    jobs_->cancel_all();
  }
  log::info("peer ", peer_name_, " disconnected");
}

}  // namespace ppgate
