// The messages on the node <-> worker link (docs/architecture.md, "worker/"): length-prefixed
// frames (frame.hpp) both ways. The node's frames are numbered, "<seq> <body>", the bodies being
// run messages (a job's JSON, lib/job_message.hpp), "skip <id>", "release <key> ..." (values put
// once that no job takes any more), "sync" and "ping"; the worker's replies start with "<seq> ",
// the last frame it had read, followed by "<id> ok|error|skipped <seconds>[ retire| retire-memory]\n<outcome members>",
// "lost <job>" (frames were taken off the link by that job), to a ping, "pong" and, to a probe
// signal, "running <job>" (held_replies.hpp; the worker may hold short jobs' replies back while
// more jobs wait, and writes them out before this answer).
// The worker's own half is worker/worker_module.cpp.
#pragma once

#include "job.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace ppgate {

// Appends one numbered frame to `out`.
void append_worker_frame(std::string& out, std::uint64_t seq, std::string_view body);

struct worker_reply {
  std::uint64_t received = 0;  // the last frame the worker had read when it replied
  bool frames_taken = false;   // "lost": frames never reached the worker's loop
  std::uint64_t last_job = 0;  // with frames_taken: the job that ran last, which took them
  bool probe_answer = false;   // "running <id>": the answer to a probe signal
  std::uint64_t taken_up = 0;  // with probe_answer: the job running, or the last one taken up
  reported_end end;            // otherwise: the job's end (views into the frame)
};

// Throws frame_error for a reply that does not start with "<seq> ".
worker_reply parse_worker_reply(std::string_view frame);

}  // namespace ppgate
