#include "job_json.hpp"

namespace ppgate {

namespace {

void write_job_fields(json_writer& w, const job& j) {
  w.member("id", j.id)
      .member("status", to_string(j.state))
      .member("function", j.spec.function->entry)
      .member("group", j.spec.group)
      .member("codec", to_string(j.spec.codec))
      .member("attempts", j.attempts);
  if (j.spec.priority != 0) w.member("priority", j.spec.priority);
  // Of its attempts, those that failed and were rerun, and those its worker died in.
  if (j.failures > 0) w.member("failed_attempts", j.failures);
  if (j.interruptions > 0) w.member("interrupted_attempts", j.interruptions);
  if (!j.node.empty()) w.member("node", j.node);
  if (j.spec.detach) w.member("detached", true);
  if (j.attempts > 0) w.member("queue_seconds", std::chrono::duration<double>(j.started - j.submitted).count());
}

}  // namespace

void write_job_json(json_writer& w, const job& j) {
  w.begin_object();
  write_job_fields(w, j);
  if (is_terminal(j.state)) w.member("run_seconds", j.run_seconds).raw_items(j.outcome);
  w.end_object();
}

void write_job_summary_json(json_writer& w, const job& j) {
  w.begin_object();
  write_job_fields(w, j);
  if (is_terminal(j.state)) w.member("run_seconds", j.run_seconds);
  w.end_object();
}

std::string format_job_json(const job& j) {
  std::string out;
  json_writer w(out);
  write_job_json(w, j);
  return out;
}

}  // namespace ppgate
