// Fuzz target: the messages of one job session (WebSocket /v1/session), one per line of the
// input, against one session's function table: batches that define and reference functions by
// "fn_id" and values by "refs", and control messages ({"cancel": TAG}, {"put": ID, "value": ...},
// {"release": ID}). The session was offered shared memory, so arguments may name files.
#include "job_parser.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

using namespace ppgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const function_interner intern = [](function_def d) { return std::make_shared<const function_def>(std::move(d)); };
  session_tables tables;
  tables.shm_prefix = "ppgate-1-1-";
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  while (!rest.empty()) {
    const auto newline = rest.find('\n');
    std::string message(rest.substr(0, newline));
    rest = newline == std::string_view::npos ? std::string_view() : rest.substr(newline + 1);
    if (message.starts_with("{")) {
      try {
        const session_control c = parse_control_message(message, tables);
        if (c.what == session_control::kind::put)
          tables.refs[c.id] = std::make_shared<const shared_value>(shared_value{next_shared_value_key(), c.value, nullptr});
        else if (c.what == session_control::kind::release)
          tables.refs.erase(c.id);
      } catch (const request_error&) {
      }
      continue;
    }
    std::string copy = message;
    try {
      (void)parse_job_submission(message, intern, &tables);
    } catch (const request_error&) {
      (void)tags_of_refused_batch(copy);
    }
  }
  return 0;
}
