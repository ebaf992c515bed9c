// The job-running half of a session, shared by the WebSocket job sessions (/v1/session) and the
// peer protocol's serving side: batches of jobs in the session format (docs/rest.md, "Sessions")
// are submitted, each job known by the client's tag; ended jobs are collected as results, written
// by the transport's `encoding`, for the transport to send. Owned through shared_ptr (it observes
// its jobs through weak_ptr).
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "job_parser.hpp"
#include "scheduler.hpp"

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ppgate {

class tagged_jobs : public job_observer, public std::enable_shared_from_this<tagged_jobs> {
 public:
  // How a transport writes what its client is told: gateway/job_session.cpp's JSON messages,
  // lib/peer/peer_server.cpp's peer frames. Borrowed; it outlives the tagged_jobs.
  class encoding {
   public:
    virtual ~encoding() = default;
    // Jobs that must run on this node's own workers (a peer's: forwarding them again could send
    // them in circles).
    virtual bool local_only() const { return false; }
    // Appends the result of the job the client knows as `tag` to the results waiting to be sent.
    virtual void append_result(std::string& results, std::int64_t tag, const job& j) const = 0;
    // A batch refused whole: the reply to send, or an empty string when each of its tags is
    // answered by a failed result appended to `results` instead.
    virtual std::string refuse_batch(std::string& results, const std::vector<std::int64_t>& tags,
                                     std::string_view why) const = 0;
    // The message that carries the results collected so far (never empty).
    virtual std::string results_message(std::string&& results) const = 0;
    // The node is draining: a batch it will not take, and a queued job it gives back. A client
    // is told its batch was refused; a peer runs the jobs elsewhere (peer_results).
    virtual std::string hand_back_batch(std::string& results, const std::vector<std::int64_t>& tags,
                                        std::string_view why) const {
      return refuse_batch(results, tags, why);
    }
    virtual void append_handed_back(std::string& results, std::int64_t tag, const job& j) const {
      append_result(results, tag, j);
    }
  };

  // `output_ready` is called whenever replies or results are waiting to be sent.
  tagged_jobs(scheduler& sched, std::function<void()> output_ready, const encoding& enc);

  // Whose jobs leave a big result in a file under the prefix, for the client to map or the
  // transport to read: none, all, or those that ask ("results_in_parts": a peer link's).
  enum class results_in_files { never, always, when_asked };

  // This session's files in /dev/shm are named `prefix`... (shared_memory.hpp), and what is left
  // of them is removed with the session. With `client_maps_them`, the client may name files there.
  void use_files(std::string prefix, bool client_maps_them, results_in_files results) {
    files_prefix_ = std::move(prefix);
    tables_.shm_prefix = client_maps_them ? files_prefix_ : std::string();
    results_in_files_ = results;
  }

  // A batch: a JSON array of jobs with "tag" and maybe "fn_id". An accepted batch produces no
  // reply; a refused one produces {"rejected":[tags],"error":{...}}. `attached`: the file the
  // attachments of the binary message it came in were written to.
  void submit_batch(std::string& text, std::shared_ptr<const shared_memory::node_file> attached = nullptr);
  // A message that is not a batch: {"cancel": TAG}, {"put": ID, "value": ...}, {"release": ID}.
  void control(std::string& text, std::shared_ptr<const shared_memory::node_file> attached = nullptr);
  void reject(std::string& text, std::string_view why);  // a batch refused whole, for `why`
  // Drain: the jobs not started yet go back to the client (encoding::append_handed_back); so do
  // later batches, whole, while the scheduler does not accept jobs.
  std::size_t hand_back_queued(std::string_view why);  // returns how many went back
  void cancel(std::int64_t tag);  // a job that already ended is ignored: its result is on its way
  void cancel_all();              // the client is gone; its shared-memory files are removed
  void refuse(std::string_view message);  // a message that was neither a batch nor a control message

  void job_ended(const job& j) override;

  bool has_output() const { return !replies_.empty() || !results_.empty(); }
  // Bytes of replies and results waiting to be taken: what backpressure bounds.
  std::size_t unsent_bytes() const { return replies_bytes_ + results_.size(); }
  // The next message to send: a reply, else the results of every job ended so far.
  std::string take_output();
  std::size_t open_jobs() const { return open_.size(); }

 private:
  void queue_reply(std::string reply);  // an empty one: only the results changed

  scheduler& sched_;
  std::function<void()> output_ready_;
  const encoding& encoding_;
  bool closed_ = false;
  session_tables tables_;  // fn_id -> definition, ref -> value, the shared-memory prefix
  std::string files_prefix_;  // empty: no files
  results_in_files results_in_files_ = results_in_files::never;
  std::unordered_map<std::uint64_t, std::int64_t> open_;  // job id -> the client's tag
  std::unordered_map<std::int64_t, std::uint64_t> by_tag_;
  std::unordered_set<std::uint64_t> handing_back_;  // job ids being given back
  std::deque<std::string> replies_;
  std::size_t replies_bytes_ = 0;
  std::string results_;  // as the encoding appends them
};

}  // namespace ppgate
