#include "tagged_jobs.hpp"

#include "json_writer.hpp"
#include "peer_protocol.hpp"

#include <utility>

namespace ppgate {

namespace {

// A framed peer `result` message: "<tag> <state> <run seconds>\n<outcome members>".
std::string peer_result(std::string_view tag, std::string_view state, double run_seconds,
                        std::string_view outcome) {
  std::string body(tag);
  body += ' ';
  body += state;
  body += ' ';
  append_json_number(body, run_seconds);
  body += '\n';
  body += outcome;
  std::string framed;
  peer::append_message(framed, peer::msg::result, body);
  return framed;
}

}  // namespace

tagged_jobs::tagged_jobs(scheduler& sched, std::function<void()> output_ready, format f)
    : sched_(sched), output_ready_(std::move(output_ready)), format_(f) {}

void tagged_jobs::submit_batch(std::string& text) {
  try {
    auto submission = parse_job_submission(
        text, [this](function_def def) { return sched_.intern(std::move(def)); }, &functions_);
    for (std::size_t i = 0; i < submission.jobs.size(); ++i) {
      // A job that came from a peer runs here: forwarding it again could send it in circles.
      submission.jobs[i].local_only = format_ == format::peer_frames;
      job& j = sched_.submit(std::move(submission.jobs[i]));
      // submit() may already have started it, but it cannot have ended: that takes a worker's reply.
      j.observer = weak_from_this();
      open_.emplace(j.id, submission.tags[i]);
      by_tag_[submission.tags[i]] = j.id;
    }
  } catch (const request_error& e) {
    const auto tags = tags_of_refused_batch(text);
    if (format_ == format::peer_frames) {
      // Each job of the batch ends failed, with the reason.
      for (const auto tag : tags)
        results_ += peer_result(std::to_string(tag), "failed", 0, error_outcome("SubmitError", e.what()));
      output_ready_();
      return;
    }
    std::string rejected = "{\"rejected\":[";
    for (std::size_t i = 0; i < tags.size(); ++i) {
      if (i > 0) rejected += ',';
      rejected += std::to_string(tags[i]);
    }
    rejected += "],\"error\":{\"message\":";
    append_json_string(rejected, e.what());
    rejected += "}}";
    replies_bytes_ += rejected.size();
    replies_.push_back(std::move(rejected));
    output_ready_();
  }
}

void tagged_jobs::refuse(std::string_view message) {
  replies_.push_back(json_error_body(message));
  replies_bytes_ += replies_.back().size();
  output_ready_();
}

void tagged_jobs::cancel(std::int64_t tag) {
  if (auto it = by_tag_.find(tag); it != by_tag_.end()) sched_.cancel(it->second);
}

void tagged_jobs::cancel_all() {
  closed_ = true;
  // Copy: each cancel ends a job, and job_ended() erases it from open_.
  std::vector<std::uint64_t> ids;
  for (const auto& [id, tag] : open_) ids.push_back(id);
  for (const auto id : ids) sched_.cancel(id);
}

void tagged_jobs::job_ended(const job& j) {
  const auto open = open_.find(j.id);
  if (open == open_.end()) return;
  const std::int64_t tag = open->second;
  open_.erase(open);
  by_tag_.erase(tag);
  if (closed_) return;
  if (format_ == format::peer_frames) {
    results_ += peer_result(std::to_string(tag), to_string(j.state), j.run_seconds, j.outcome);
    output_ready_();
    return;
  }
  // Compact: the client knows everything else about its job already.
  if (!results_.empty()) results_ += ',';
  results_ += "{\"tag\":";
  results_ += std::to_string(tag);
  results_ += ",\"id\":";
  results_ += std::to_string(j.id);
  results_ += ",\"status\":\"";
  results_ += to_string(j.state);
  results_ += "\",\"run_seconds\":";
  append_json_number(results_, j.run_seconds);
  results_ += ',';
  results_ += j.outcome;
  results_ += '}';
  output_ready_();
}

std::string tagged_jobs::take_output() {
  if (format_ == format::peer_frames) return std::exchange(results_, {});
  if (!replies_.empty()) {
    std::string out = std::move(replies_.front());
    replies_.pop_front();
    replies_bytes_ -= out.size();
    return out;
  }
  std::string out = "{\"results\":[";
  out += results_;
  out += "]}";
  results_.clear();
  return out;
}

}  // namespace ppgate
