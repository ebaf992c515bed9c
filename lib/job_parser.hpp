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
// Values a session has put, by the number it gave them, for jobs to take ("refs").
using session_refs = std::unordered_map<std::int64_t, std::shared_ptr<const shared_value>>;

// What the jobs of one session (or peer link) may refer to.
struct session_tables {
  session_functions functions;
  session_refs refs;
  std::string shm_prefix;  // the session's shared-memory files (shared_memory.hpp); empty: none
  // While a binary message is parsed: the file its attachments were written to.
  std::shared_ptr<const shared_memory::node_file> attached;
};

// `body` gets simdjson's padding appended to its capacity (not its contents).
// Throws request_error with a message that names the offending field.
// With `session`, jobs may define and reference functions by "fn_id" and values by "refs"; a
// refused submission defines none. With its shm_prefix, pickled arguments may name that
// session's shared-memory files.
job_submission parse_job_submission(std::string& body, const function_interner& intern,
                                    session_tables* session = nullptr);

// The "tag" of each job of a session batch that parse_job_submission refused, so the client can
// fail exactly those jobs. Valid JSON is read element by element; malformed JSON is scanned
// leniently for "tag": N. `body` gets padding as above.
std::vector<std::int64_t> tags_of_refused_batch(std::string& body);

// A session message that is not a batch, in any valid JSON spelling: {"cancel": TAG},
// {"put": ID, "value": PICKLE} (a value for jobs to take by "refs") or {"release": ID}.
// Throws request_error otherwise. `body` gets padding as above.
struct session_control {
  enum class kind { cancel, put, release } what = kind::cancel;
  std::int64_t id = 0;  // the job's tag (cancel) or the value's number (put, release)
  std::string value;    // put: the pickle's JSON text, checked (a base64 string, or in parts)
  bool value_in_client_memory = false;  // in the client's shared memory (the session's files)
};
// With `session`: its shared-memory prefix and, for a binary message, its attachments.
session_control parse_control_message(std::string& body, const session_tables& session = {});

}  // namespace ppgate
