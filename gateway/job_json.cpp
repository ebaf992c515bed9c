#include "job_json.hpp"

#include "json_writer.hpp"

namespace ppgate {

std::string format_job_json(const job& j) {
  std::string out = "{\"id\":" + std::to_string(j.id) + ",\"status\":\"";
  out += to_string(j.state);
  out += "\",\"function\":";
  append_json_string(out, j.spec.function->entry);
  out += ",\"group\":";
  append_json_string(out, j.spec.group);
  out += ",\"codec\":\"";
  out += to_string(j.spec.codec);
  out += "\",\"attempts\":" + std::to_string(j.attempts);
  if (!j.node.empty()) {
    out += ",\"node\":";
    append_json_string(out, j.node);
  }
  if (j.attempts > 0) {
    out += ",\"queue_seconds\":";
    append_json_number(out, std::chrono::duration<double>(j.started - j.submitted).count());
  }
  if (is_terminal(j.state)) {
    out += ",\"run_seconds\":";
    append_json_number(out, j.run_seconds);
    out += ',';
    out += j.outcome;
  }
  out += '}';
  return out;
}

}  // namespace ppgate
