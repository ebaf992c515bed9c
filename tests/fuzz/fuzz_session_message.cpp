// Fuzz target: the messages of one job session (WebSocket /v1/session), one per line of the
// input, against one session's function table: batches that define and reference functions by
// "fn_id", and {"cancel": TAG}. The session was offered shared memory, so arguments may name files.
#include "job_parser.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

using namespace ppgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const function_interner intern = [](function_def d) { return std::make_shared<const function_def>(std::move(d)); };
  session_functions functions;
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  while (!rest.empty()) {
    const auto newline = rest.find('\n');
    std::string message(rest.substr(0, newline));
    rest = newline == std::string_view::npos ? std::string_view() : rest.substr(newline + 1);
    if (message.starts_with("{\"cancel\"")) {
      try {
        (void)parse_cancel_message(message);
      } catch (const request_error&) {
      }
      continue;
    }
    std::string copy = message;
    try {
      (void)parse_job_submission(message, intern, &functions, "ppgate-1-1-");
    } catch (const request_error&) {
      (void)tags_of_refused_batch(copy);
    }
  }
  return 0;
}
