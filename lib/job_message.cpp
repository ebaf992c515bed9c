#include "job_message.hpp"

#include "json_writer.hpp"

namespace ppgate {

void append_job_message(std::string& out, const job& j, const job_message_parts& parts) {
  const job_spec& spec = j.spec;
  const function_def& f = *spec.function;
  out.reserve(out.size() + 96 + spec.args.size() + spec.kwargs.size() + spec.globals.size() +
              (parts.with_definition ? f.source.size() : 0));
  json_writer w(out);
  w.begin_object().member("tag", j.id).member("fn_id", parts.fn_id);
  if (parts.with_definition) {
    w.member("function", f.entry);
    if (!f.source.empty()) w.member("source", f.source);
    w.key("modules").begin_array();
    for (const auto& m : f.modules) w.value(m);
    w.end_array();
  }
  w.member("codec", to_string(spec.codec));
  // Arguments are raw JSON under codec json, base64 strings under codec pickle; an empty one is
  // the receiver's default (no arguments, no extra names).
  const bool raw = spec.codec == arg_codec::json;
  for (const auto& [name, value] : {std::pair<const char*, const std::string&>{"args", spec.args},
                                    {"kwargs", spec.kwargs},
                                    {"globals", spec.globals}}) {
    if (value.empty()) continue;
    w.key(name);
    if (raw) w.raw(value);
    else w.value(value);
  }
  if (spec.map) w.member("map", true);
  if (parts.with_options) {
    if (spec.timeout) w.member("timeout", std::chrono::duration<double>(*spec.timeout).count());
    if (spec.retries > 0) w.member("retries", spec.retries);
    w.member("group", spec.group);
  }
  w.end_object();
}

}  // namespace ppgate
