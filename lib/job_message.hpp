// The one encoding of a job for whoever runs it: a worker of this node (lib/worker_protocol.hpp)
// or a peer (lib/peer/peer_protocol.hpp). It is a job of the session format (docs/rest.md,
// "Sessions"), which job_parser reads back: the job's id as its tag, its function by the fn_id the
// receiver knows it by (with the definition the first time that receiver sees it), its arguments
// (and whether it is a map job), the values put once that it takes, by their node-wide key (with
// the value the first time), and, for a peer, the options it enforces itself (timeout, retries,
// group).
#pragma once

#include "job.hpp"

#include <cstdint>
#include <functional>
#include <string>

namespace ppgate {

struct job_message_parts {
  std::int64_t fn_id = 0;         // the receiver's name for the job's function
  bool with_definition = false;   // "function", "source" and "modules": the first time
  bool with_options = false;      // "timeout", "retries" and "group"
  bool with_shm = false;          // "shm": the session's shared-memory prefix, for results (workers)
  // Arguments in this host's shared memory are read and sent inline (peers: another host), as
  // base64, or, with `attachments`, as parts of those (the rest of a binary message).
  bool inline_shared_memory = false;
  std::string* attachments = nullptr;
  // For each value the job takes ("refs"): whether the receiver has it already, so it goes by
  // its key alone; otherwise it goes as {"put": key, "value": ...}, and the receiver has it next
  // time (the callee notes that). Unset: every value goes whole.
  std::function<bool(const std::shared_ptr<const shared_value>&)> receiver_has = {};
};

// Appends the job's JSON object to `out`. With inline_shared_memory, throws shared_memory::error
// when an argument's file cannot be read.
void append_job_message(std::string& out, const job& j, const job_message_parts& parts);

}  // namespace ppgate
