// The job-running half of a session, shared by the WebSocket job sessions (/v1/session) and the
// peer protocol's serving side: batches of jobs in the session format (docs/rest.md, "Sessions")
// are submitted, each job known by the client's tag; ended jobs are collected as result objects
// for the transport to send. Owned through shared_ptr (it observes its jobs through weak_ptr).
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "job_request.hpp"
#include "scheduler.hpp"

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

namespace ppgate {

class tagged_jobs : public job_observer, public std::enable_shared_from_this<tagged_jobs> {
 public:
  // session_json: results as {"results":[...]} (WebSocket sessions);
  // peer_frames: each result as a framed peer `result` message (lib/peer_protocol.hpp), and the
  // jobs run on this node's own workers only.
  enum class format { session_json, peer_frames };

  // `output_ready` is called whenever replies or results are waiting to be sent.
  tagged_jobs(scheduler& sched, std::function<void()> output_ready, format f = format::session_json);

  // A batch: a JSON array of jobs with "tag" and maybe "fn_id". An accepted batch produces no
  // reply; a refused one produces {"rejected":[tags],"error":{...}}.
  void submit_batch(std::string& text);
  void cancel(std::int64_t tag);  // a job that already ended is ignored: its result is on its way
  void cancel_all();              // the client is gone
  void refuse(std::string_view message);  // a message that was neither a batch nor a cancel

  void job_ended(const job& j) override;

  bool has_output() const { return !replies_.empty() || !results_.empty(); }
  // Bytes of replies and results waiting to be taken: what backpressure bounds.
  std::size_t unsent_bytes() const { return replies_bytes_ + results_.size(); }
  // The next message to send: a reply, else {"results":[...]} with every ended job so far.
  std::string take_output();
  std::size_t open_jobs() const { return open_.size(); }

 private:
  scheduler& sched_;
  std::function<void()> output_ready_;
  format format_;
  bool closed_ = false;
  session_functions functions_;                          // fn_id -> definition
  std::unordered_map<std::uint64_t, std::int64_t> open_;  // job id -> the client's tag
  std::unordered_map<std::int64_t, std::uint64_t> by_tag_;
  std::deque<std::string> replies_;
  std::size_t replies_bytes_ = 0;
  std::string results_;  // result objects joined by ','
};

}  // namespace ppgate
