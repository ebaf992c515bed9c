// Parsing of POST /v1/jobs bodies (simdjson On-Demand) into job_specs.
// Field reference: docs/rest.md. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "job.hpp"

#include <functional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace ppgate {

// Bad input from a client: the message is meant for that client (HTTP 400).
struct request_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct job_submission {
  std::vector<job_spec> jobs;
  std::vector<std::int64_t> tags;  // per job: the session client's "tag" (0 if none)
  bool batch = false;              // the body was an array
};

using function_interner = std::function<std::shared_ptr<const function_def>(function_def)>;

// Functions a session client has defined, by the "fn_id" it gave them, so that later jobs of the
// same function carry only the id (sessions: docs/rest.md). Per connection.
using session_functions = std::unordered_map<std::int64_t, std::shared_ptr<const function_def>>;

// `body` gets simdjson's padding appended to its capacity (not its contents).
// Throws request_error with a message that names the offending field.
// With `session` (a session's functions), jobs may define and reference functions by "fn_id";
// a refused submission defines none. With `shm_prefix` (a session offered shared memory, see
// shared_memory.hpp), pickled arguments may name that session's shared-memory files.
job_submission parse_job_submission(std::string& body, const function_interner& intern,
                                    session_functions* session = nullptr,
                                    std::string_view shm_prefix = {});

// The "tag" of each job of a session batch that parse_job_submission refused, so the client can
// fail exactly those jobs. Valid JSON is read element by element; malformed JSON is scanned
// leniently for "tag": N. `body` gets padding as above.
std::vector<std::int64_t> tags_of_refused_batch(std::string& body);

// A session message that is not a batch: {"cancel": TAG}, any valid JSON spelling. Returns TAG;
// throws request_error otherwise. `body` gets padding as above.
std::int64_t parse_cancel_message(std::string& body);

}  // namespace ppgate
