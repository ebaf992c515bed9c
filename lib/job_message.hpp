// The one encoding of a job for whoever runs it: a worker of this node (lib/worker_protocol.hpp)
// or a peer (lib/peer/peer_protocol.hpp). It is a job of the session format (docs/rest.md,
// "Sessions"), which job_parser reads back: the job's id as its tag, its function by the fn_id the
// receiver knows it by (with the definition the first time that receiver sees it), its arguments
// (and whether it is a map job) and, for a peer, the options it enforces itself (timeout, retries,
// group).
#pragma once

#include "job.hpp"

#include <cstdint>
#include <string>

namespace ppgate {

struct job_message_parts {
  std::int64_t fn_id = 0;         // the receiver's name for the job's function
  bool with_definition = false;   // "function", "source" and "modules": the first time
  bool with_options = false;      // "timeout", "retries" and "group"
};

// Appends the job's JSON object to `out`.
void append_job_message(std::string& out, const job& j, const job_message_parts& parts);

}  // namespace ppgate
