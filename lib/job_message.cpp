#include "job_message.hpp"

#include "json_writer.hpp"
#include "shared_memory.hpp"

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
  // Arguments are kept as the checked JSON text they came as; an empty one is the receiver's
  // default (no arguments, no extra names).
  const auto write_pickle = [&](std::string_view value) {
    if (parts.inline_shared_memory && spec.codec == arg_codec::pickle) {
      std::string inlined;
      if (parts.attachments != nullptr) shared_memory::append_attached(inlined, value, *parts.attachments);
      else shared_memory::append_inline(inlined, value);
      w.raw(inlined);
    } else {
      w.raw(value);
    }
  };
  for (const auto& [name, value] : {std::pair<const char*, const std::string&>{"args", spec.args},
                                    {"kwargs", spec.kwargs},
                                    {"globals", spec.globals}}) {
    if (value.empty()) continue;
    w.key(name);
    write_pickle(value);
  }
  if (!spec.refs.empty()) {
    w.key("refs").begin_array();
    for (const auto& ref : spec.refs) {
      if (parts.receiver_has && parts.receiver_has(ref)) {
        w.value(ref->key);
      } else {
        w.begin_object().member("put", ref->key).key("value");
        write_pickle(ref->value);
        w.end_object();
      }
    }
    w.end_array();
  }
  if (spec.map) w.member("map", true);
  if (parts.with_shm && !spec.shm_prefix.empty()) w.member("shm", spec.shm_prefix);
  if (parts.with_options) {
    // Its session takes a big result in parts (in a file, or as attachments): so may the peer send it.
    if (!spec.shm_prefix.empty()) w.member("results_in_parts", true);
    if (spec.timeout) w.member("timeout", std::chrono::duration<double>(*spec.timeout).count());
    if (spec.retries > 0) w.member("retries", spec.retries);
    if (spec.retry_backoff.count() > 0)
      w.member("retry_backoff", std::chrono::duration<double>(spec.retry_backoff).count());
    if (spec.priority != 0) w.member("priority", spec.priority);
    w.member("group", spec.group);
  }
  w.end_object();
}

}  // namespace ppgate
