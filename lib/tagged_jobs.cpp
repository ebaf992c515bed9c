#include "tagged_jobs.hpp"

#include "json_writer.hpp"
#include "shared_memory.hpp"

#include <algorithm>
#include <utility>

namespace ppgate {

tagged_jobs::tagged_jobs(scheduler& sched, std::function<void()> output_ready, const encoding& enc)
    : sched_(sched), output_ready_(std::move(output_ready)), encoding_(enc) {}

void tagged_jobs::submit_batch(std::string& text, std::shared_ptr<const shared_memory::node_file> attached) {
  if (!sched_.accepting()) {
    queue_reply(encoding_.hand_back_batch(results_, tags_of_refused_batch(text), sched_.refusal()));
    return;
  }
  tables_.attached = std::move(attached);
  try {
    auto submission = parse_job_submission(
        text, [this](function_def def) { return sched_.intern(std::move(def)); }, &tables_);
    if (const std::string taken = sched_.ids_taken(submission.jobs); !taken.empty()) throw request_error(taken);
    for (std::size_t i = 0; i < submission.jobs.size(); ++i) {
      submission.jobs[i].local_only = encoding_.local_only();
      submission.jobs[i].from_link = true;
      // A detached job's result stays on the node, inline: the session's files go with it.
      const bool to_file = results_in_files_ == results_in_files::always ||
                           (results_in_files_ == results_in_files::when_asked && submission.jobs[i].results_in_parts);
      if (to_file && !submission.jobs[i].detach) submission.jobs[i].shm_prefix = files_prefix_;
      job& j = sched_.submit(std::move(submission.jobs[i]));
      // submit() may already have started it, but it cannot have ended: that takes a worker's reply.
      j.observer = weak_from_this();
      open_.emplace(j.id, submission.tags[i]);
      by_tag_[submission.tags[i]] = j.id;
    }
    tables_.attached.reset();
  } catch (const request_error& e) {
    tables_.attached.reset();
    reject(text, e.what());
  }
}

void tagged_jobs::refuse(std::string_view message) {
  replies_.push_back(json_error_body(message));
  replies_bytes_ += replies_.back().size();
  output_ready_();
}

void tagged_jobs::control(std::string& text, std::shared_ptr<const shared_memory::node_file> attached) {
  tables_.attached = std::move(attached);
  try {
    const session_control c = parse_control_message(text, tables_);
    switch (c.what) {
      case session_control::kind::cancel: cancel(c.id); break;
      case session_control::kind::put:
        // (The value holds the attachments' file only if it is in it: then its text names it.)
        tables_.refs[c.id] = std::make_shared<const shared_value>(
            shared_value{next_shared_value_key(), c.value, c.value.starts_with("{") ? tables_.attached : nullptr,
                         c.value_in_client_memory});
        break;
      case session_control::kind::release: tables_.refs.erase(c.id); break;
    }
  } catch (const request_error& e) {
    refuse(e.what());
  }
  tables_.attached.reset();
}

void tagged_jobs::cancel(std::int64_t tag) {
  if (auto it = by_tag_.find(tag); it != by_tag_.end()) sched_.cancel(it->second);
}

void tagged_jobs::cancel_all() {
  closed_ = true;
  // Copy: each cancel ends a job, and job_ended() erases it from open_. Detached jobs live on.
  std::vector<std::uint64_t> ids;
  for (const auto& [id, tag] : open_)
    if (const job* j = sched_.find(id); j != nullptr && !j->spec.detach) ids.push_back(id);
  for (const auto id : ids) sched_.cancel(id);
  // The client's arguments and the results it did not read: nobody maps them any more.
  tables_.refs.clear();
  shared_memory::remove_files(files_prefix_);
}

std::size_t tagged_jobs::hand_back_queued(std::string_view why) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, tag] : open_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  std::size_t handed = 0;
  for (const auto id : ids) {
    handing_back_.insert(id);
    if (sched_.hand_back(id, why)) ++handed;
    else handing_back_.erase(id);  // it runs: it finishes here
  }
  return handed;
}

void tagged_jobs::job_ended(const job& j) {
  const auto open = open_.find(j.id);
  if (open == open_.end()) return;
  const std::int64_t tag = open->second;
  open_.erase(open);
  by_tag_.erase(tag);
  const bool handed_back = handing_back_.erase(j.id) > 0;
  if (closed_) return;
  if (handed_back)
    encoding_.append_handed_back(results_, tag, j);
  else
    encoding_.append_result(results_, tag, j);
  output_ready_();
}

void tagged_jobs::reject(std::string& text, std::string_view why) {
  queue_reply(encoding_.refuse_batch(results_, tags_of_refused_batch(text), why));
}

void tagged_jobs::queue_reply(std::string reply) {
  if (!reply.empty()) {
    replies_bytes_ += reply.size();
    replies_.push_back(std::move(reply));
  }
  output_ready_();
}

std::string tagged_jobs::take_output() {
  if (!replies_.empty()) {
    std::string out = std::move(replies_.front());
    replies_.pop_front();
    replies_bytes_ -= out.size();
    return out;
  }
  return encoding_.results_message(std::exchange(results_, {}));
}

}  // namespace ppgate
