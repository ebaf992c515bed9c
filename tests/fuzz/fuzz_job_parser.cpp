// Fuzz target: a POST /v1/jobs body (one job or a batch), as parse_job_submission reads it; a
// refused body is then scanned for the tags of its jobs, as a session does.
#include "job_parser.hpp"

#include <cstddef>
#include <cstdint>

using namespace ppgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const function_interner intern = [](function_def d) { return std::make_shared<const function_def>(std::move(d)); };
  std::string body = input;
  try {
    const job_submission s = parse_job_submission(body, intern);
    if (s.jobs.empty()) __builtin_trap();  // a submission is never empty
  } catch (const request_error&) {
    std::string again = input;
    (void)tags_of_refused_batch(again);
  }
  return 0;
}
