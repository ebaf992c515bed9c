#include "job_parser.hpp"

#include "json_writer.hpp"
#include "shared_memory.hpp"

#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <optional>

namespace ppgate {

namespace od = simdjson::ondemand;

namespace {

constexpr double max_timeout_seconds = 30.0 * 24 * 3600;
constexpr std::int64_t max_retries = 100;
constexpr double max_retry_backoff_seconds = 3600;
constexpr std::int64_t min_priority = -1000000000, max_priority = 1000000000;
constexpr std::size_t max_group_length = 256;
constexpr std::size_t max_name_length = 512;

[[noreturn]] void fail(const std::string& message) { throw request_error(message); }

void check(simdjson::error_code ec, std::string_view field, std::string_view expected) {
  if (ec == simdjson::SUCCESS) return;
  if (ec == simdjson::INCORRECT_TYPE || ec == simdjson::NUMBER_ERROR ||
      ec == simdjson::NUMBER_OUT_OF_RANGE)
    fail("field '" + std::string(field) + "' must be " + std::string(expected));
  fail("invalid JSON in field '" + std::string(field) + "': " + simdjson::error_message(ec));
}

std::string_view get_string(od::value& v, std::string_view field) {
  std::string_view s;
  check(v.get_string().get(s), field, "a string");
  return s;
}

std::vector<std::string> get_string_array(od::value& v, std::string_view field) {
  od::array arr;
  check(v.get_array().get(arr), field, "an array of strings");
  std::vector<std::string> out;
  for (auto element : arr) {
    od::value item;
    check(element.get(item), field, "an array of strings");
    std::string_view s;
    check(item.get_string().get(s), field, "an array of strings");
    out.emplace_back(s);
  }
  return out;
}

// Arguments are passed through as raw JSON text, which the on-demand parser skips without
// checking; the worker's json.loads would then take what strict JSON refuses (NaN, Infinity) or die
// on the rest. So each is checked here, strictly, and nested no deeper than the worker handles.
constexpr std::size_t max_argument_depth = 512;

// Returns the parsed value, valid until the next call on this thread.
simdjson::dom::element check_strict_json(std::string_view raw, std::string_view field) {
  thread_local simdjson::dom::parser parser = [] {
    simdjson::dom::parser p;
    if (p.allocate(4096, max_argument_depth) != simdjson::SUCCESS) throw std::bad_alloc();
    return p;
  }();
  simdjson::dom::element doc;
  const auto ec = parser.parse(raw.data(), raw.size()).get(doc);
  if (ec == simdjson::SUCCESS) return doc;
  if (ec == simdjson::DEPTH_ERROR)
    fail("field '" + std::string(field) + "' is nested deeper than " + std::to_string(max_argument_depth) + " levels");
  fail("field '" + std::string(field) + "' is not valid JSON: " + simdjson::error_message(ec));
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || static_cast<unsigned char>(c) >= 0x80;
}

// "name", "Class.method" or, for an importable reference, "package.module:qualname".
void check_entry_name(std::string_view name, bool reference) {
  if (name.empty()) fail("field 'function' must not be empty");
  if (name.size() > max_name_length) fail("field 'function' is too long");
  const auto colon = name.find(':');
  if (reference && colon == std::string_view::npos)
    fail("without 'source', field 'function' must be an importable reference such as "
         "\"math:sqrt\"");
  if (!reference && colon != std::string_view::npos)
    fail("field 'function' names a function defined in 'source' and cannot contain ':'");
  for (char c : name)
    if (!is_name_char(c) && c != ':')
      fail("field 'function' is not a Python name: \"" + std::string(name) + "\"");
}

// A session's tables while one of its batches is parsed: the batch's own definitions (functions
// and values) are kept apart and become the session's only if the whole batch is accepted, so a
// refused batch defines nothing (its client will send them again).
struct batch_tables {
  session_tables* session = nullptr;  // null: not a session
  session_functions staged_functions;
  session_refs staged_refs;

  std::shared_ptr<const function_def> find_function(std::int64_t id) const {
    if (auto it = staged_functions.find(id); it != staged_functions.end()) return it->second;
    if (auto it = session->functions.find(id); it != session->functions.end()) return it->second;
    return nullptr;
  }
  std::shared_ptr<const shared_value> find_ref(std::int64_t id) const {
    if (auto it = staged_refs.find(id); it != staged_refs.end()) return it->second;
    if (auto it = session->refs.find(id); it != session->refs.end()) return it->second;
    return nullptr;
  }
  std::string_view shm_prefix() const { return session != nullptr ? std::string_view(session->shm_prefix) : ""; }
  const shared_memory::node_file* attached() const { return session != nullptr ? session->attached.get() : nullptr; }
  void commit() {
    for (auto& [id, f] : staged_functions) session->functions[id] = std::move(f);
    for (auto& [id, v] : staged_refs) session->refs[id] = std::move(v);
  }
};

// An "args", "kwargs" or "globals" field as given: its JSON text and what it holds.
struct argument_field {
  enum kind_t { absent, string, array, object } kind = absent;
  std::string_view raw;  // the JSON text: a string with its quotes, an array or an object
  std::string rewritten;  // parts in attachments, as parts of the file the node wrote them to
  std::string text() const { return rewritten.empty() ? std::string(raw) : rewritten; }
};

constexpr std::size_t max_pickled_parts = 4096;

// A pickle in parts (docs/rest.md, "Pickled arguments in parts"): the pickle stream first, then
// its out-of-band buffers (pickle protocol 5), either inline as base64 strings,
//   {"parts": ["<base64>", ...]}
// or as [offset, size] ranges of a shared-memory file of this session,
//   {"shm": "<name>", "parts": [[offset, size], ...]},
// or of the attachments of the binary message it came in (docs/rest.md, "Binary messages"),
//   {"attached": true, "parts": [[offset, size], ...]}.
// Only a session offered shared memory may use the second form. The third is returned as the
// second, naming the file the node wrote the attachments to; the others come back empty.
std::string check_pickled_parts(std::string_view raw, std::string_view field, std::string_view shm_prefix,
                                const shared_memory::node_file* attached, bool* in_client_memory = nullptr) {
  const std::string f(field);
  const simdjson::dom::element doc = check_strict_json(raw, field);
  const auto shape = "field '" + f + "' with codec \"pickle\" must be a base64 string, " +
                     "{\"parts\": [base64, ...]}, {\"shm\": NAME, \"parts\": [[offset, size], ...]} or " +
                     "{\"attached\": true, \"parts\": [[offset, size], ...]}";
  simdjson::dom::object obj;
  if (doc.get_object().get(obj)) fail(shape);
  std::string_view name;
  bool in_shm = false, in_attachments = false;
  simdjson::dom::array parts;
  bool have_parts = false;
  for (const auto [key, value] : obj) {
    if (key == "shm" && !in_attachments) {
      if (value.get_string().get(name)) fail(shape);
      in_shm = true;
    } else if (key == "attached" && !in_shm) {
      bool yes = false;
      if (value.get_bool().get(yes) || !yes) fail(shape);
      in_attachments = true;
    } else if (key == "parts") {
      if (value.get_array().get(parts)) fail(shape);
      have_parts = true;
    } else {
      fail(shape + "; '" + std::string(key) + "' is not one of its fields here");
    }
  }
  if (!have_parts) fail(shape);
  if (in_shm) {
    if (shm_prefix.empty())
      fail("field '" + f + "' names shared memory, which only a session from this node's host " +
           "may use, once offered (the PPGate-Shared-Memory header)");
    if (!shared_memory::is_session_file(name, shm_prefix))
      fail("field '" + f + "' names shared memory \"" + std::string(name).substr(0, 100) +
           "\", which is not this session's (its names start with \"" + std::string(shm_prefix) + "\")");
  }
  if (in_attachments && attached == nullptr)
    fail("field '" + f + "' refers to attachments, which only a binary message has");
  if (in_client_memory != nullptr) *in_client_memory = in_shm;
  std::string rewritten;
  json_writer w(rewritten);
  if (in_attachments) w.begin_object().member("shm", attached->name()).key("parts").begin_array();
  std::size_t count = 0;
  for (const simdjson::dom::element part : parts) {
    if (++count > max_pickled_parts) fail("field '" + f + "' has more than 4096 parts");
    if (!in_shm && !in_attachments) {
      if (!part.is_string()) fail(shape);
      continue;
    }
    simdjson::dom::array range;
    std::uint64_t offset = 0, size = 0;
    if (part.get_array().get(range) || range.size() != 2 || range.at(0).get_uint64().get(offset) ||
        range.at(1).get_uint64().get(size) || offset > (std::uint64_t(1) << 50) || size > (std::uint64_t(1) << 50))
      fail("field '" + f + "': each part is [offset, size], two whole numbers");
    if (in_attachments) {
      if (offset + size > attached->size())
        fail("field '" + f + "': part [" + std::to_string(offset) + ", " + std::to_string(size) +
             "] lies outside the message's " + std::to_string(attached->size()) + " bytes of attachments");
      w.begin_array().value(offset).value(size).end_array();
    }
  }
  if (count == 0) fail("field '" + f + "' needs at least one part: the pickle");
  if (!in_attachments) return {};
  w.end_array().end_object();
  return rewritten;
}

constexpr std::size_t max_refs_per_job = 1024;

// A pickle field's value (base64, or in parts) given as raw JSON: checked, returned as its text
// (parts in attachments as the file the node wrote them to).
std::string checked_pickle_value(od::value& v, std::string_view field, std::string_view shm_prefix,
                                 const shared_memory::node_file* attached, bool& in_client_memory) {
  in_client_memory = false;
  od::json_type type{};
  check(v.type().get(type), field, "a base64 string or a pickle in parts");
  if (type == od::json_type::string) {
    std::string_view raw = v.raw_json_token();
    (void)get_string(v, field);
    while (!raw.empty() && raw.back() != '"') raw.remove_suffix(1);
    return std::string(raw);
  }
  od::object o;
  std::string_view raw;
  check(v.get_object().get(o), field, "a base64 string or a pickle in parts");
  check(o.raw_json().get(raw), field, "a base64 string or a pickle in parts");
  std::string rewritten = check_pickled_parts(raw, field, shm_prefix, attached, &in_client_memory);
  return rewritten.empty() ? std::string(raw) : std::move(rewritten);
}

// A job's "refs": the values its pickles name (by their index in this list), each the number of
// a value the session put, or {"put": ID, "value": ...} defining one as the batch is accepted.
void parse_refs(od::value& v, batch_tables& tables, job_spec& spec) {
  if (tables.session == nullptr) fail("field 'refs' is accepted on a session (/v1/session) only");
  od::array arr;
  check(v.get_array().get(arr), "refs", "an array of value numbers");
  for (auto element : arr) {
    if (spec.refs.size() == max_refs_per_job) fail("a job takes at most 1024 refs");
    od::value item;
    check(element.get(item), "refs", "an array of value numbers");
    od::json_type type{};
    check(item.type().get(type), "refs", "an array of value numbers");
    std::int64_t id = 0;
    if (type == od::json_type::object) {
      od::object def;
      check(item.get_object().get(def), "refs", "an array of value numbers");
      std::string value;
      bool have_id = false, have_value = false, in_client_memory = false;
      for (auto field : def) {
        std::string_view key;
        check(field.unescaped_key().get(key), "refs", "{\"put\": ID, \"value\": ...}");
        od::value fv;
        check(field.value().get(fv), "refs", "{\"put\": ID, \"value\": ...}");
        if (key == "put") {
          check(fv.get_int64().get(id), "refs", "{\"put\": ID, \"value\": ...} with an integer ID");
          have_id = true;
        } else if (key == "value") {
          value = checked_pickle_value(fv, "refs", tables.shm_prefix(), tables.attached(), in_client_memory);
          have_value = true;
        } else {
          fail("a definition in 'refs' is {\"put\": ID, \"value\": ...}; '" + std::string(key) +
               "' is not one of its fields");
        }
      }
      if (!have_id || !have_value) fail("a definition in 'refs' is {\"put\": ID, \"value\": ...}");
      tables.staged_refs[id] = std::make_shared<const shared_value>(
          shared_value{next_shared_value_key(), std::move(value), tables.session->attached, in_client_memory});
    } else {
      check(item.get_int64().get(id), "refs", "an array of value numbers");
    }
    auto ref = tables.find_ref(id);
    if (!ref) fail("unknown ref " + std::to_string(id) + " (never put on this session, or released)");
    spec.refs.push_back(std::move(ref));
  }
}

job_spec parse_one(od::object obj, const function_interner& intern, batch_tables& functions,
                   std::int64_t& tag) {
  const std::string_view shm_prefix = functions.shm_prefix();
  job_spec spec;
  function_def def;
  bool have_function = false, have_source = false;
  argument_field args, kwargs, globals;
  bool args_are_arrays = true;  // json args: every element is an array (a map job's calls)
  std::optional<std::int64_t> fn_id;
  std::vector<std::string> depfuncs;
  bool have_tag = false;

  for (auto field : obj) {
    std::string_view key;
    check(field.unescaped_key().get(key), "(key)", "a string");
    od::value v;
    check(field.value().get(v), key, "a value");
    if (key == "source") {
      def.source = get_string(v, key);
      have_source = true;
    } else if (key == "function") {
      def.entry = get_string(v, key);
      have_function = true;
    } else if (key == "depfuncs") {
      depfuncs = get_string_array(v, key);
    } else if (key == "modules") {
      def.modules = get_string_array(v, key);
      for (const auto& m : def.modules)
        if (m.empty() || m.find('\n') != std::string::npos)
          fail("field 'modules' holds a module name or one import statement per entry");
    } else if (key == "tag") {
      check(v.get_int64().get(tag), key, "an integer");
      if (functions.session == nullptr) fail("field 'tag' is accepted on a session (/v1/session) only");
      have_tag = true;
    } else if (key == "fn_id") {
      std::int64_t id = 0;
      check(v.get_int64().get(id), key, "an integer");
      if (functions.session == nullptr) fail("field 'fn_id' is accepted on a session (/v1/session) only");
      fn_id = id;
    } else if (key == "args" || key == "kwargs" || key == "globals") {
      argument_field& a = key == "args" ? args : key == "kwargs" ? kwargs : globals;
      od::json_type type{};
      check(v.type().get(type), key, "an array, an object or a string");
      if (type == od::json_type::string) {
        a.raw = v.raw_json_token();
        (void)get_string(v, key);  // validates it
        while (!a.raw.empty() && a.raw.back() != '"') a.raw.remove_suffix(1);  // the token's trailing spaces
        a.kind = argument_field::string;
      } else if (type == od::json_type::array) {
        od::array arr;
        check(v.get_array().get(arr), key, "an array");
        check(arr.raw_json().get(a.raw), key, "an array");
        a.kind = argument_field::array;
      } else if (type == od::json_type::object) {
        od::object o;
        check(v.get_object().get(o), key, "an object");
        check(o.raw_json().get(a.raw), key, "an object");
        a.kind = argument_field::object;
      } else {
        fail(key == "args" ? "field 'args' must be an array (or a base64 string with codec \"pickle\")"
                           : "field '" + std::string(key) +
                                 "' must be an object (or a base64 string with codec \"pickle\")");
      }
      if (a.kind != argument_field::string) {
        const simdjson::dom::element parsed = check_strict_json(a.raw, key);
        simdjson::dom::array calls;
        if (key == "args" && parsed.get_array().get(calls) == simdjson::SUCCESS)
          for (const simdjson::dom::element call : calls) args_are_arrays = args_are_arrays && call.is_array();
      }
    } else if (key == "codec") {
      const auto codec = get_string(v, key);
      if (codec == "json") spec.codec = arg_codec::json;
      else if (codec == "pickle") spec.codec = arg_codec::pickle;
      else fail("field 'codec' must be \"json\" or \"pickle\"");
    } else if (key == "group") {
      spec.group = get_string(v, key);
      if (spec.group.empty() || spec.group.size() > max_group_length)
        fail("field 'group' must be a non-empty string of at most 256 bytes");
    } else if (key == "timeout") {
      double seconds = 0;
      check(v.get_double().get(seconds), key, "a number of seconds");
      if (!(seconds > 0) || seconds > max_timeout_seconds)
        fail("field 'timeout' must be a number of seconds above 0 and at most 2592000");
      spec.timeout = std::chrono::milliseconds(std::max<std::int64_t>(1, std::llround(seconds * 1000)));
    } else if (key == "map") {
      check(v.get_bool().get(spec.map), key, "true or false");
    } else if (key == "results_in_parts") {
      if (functions.session == nullptr) fail("field 'results_in_parts' is accepted on a peer link only");
      check(v.get_bool().get(spec.results_in_parts), key, "true or false");
    } else if (key == "refs") {
      parse_refs(v, functions, spec);
    } else if (key == "retries") {
      std::int64_t n = 0;
      check(v.get_int64().get(n), key, "an integer");
      if (n < 0 || n > max_retries) fail("field 'retries' must be an integer from 0 to 100");
      spec.retries = static_cast<int>(n);
    } else if (key == "retry_backoff") {
      double seconds = 0;
      check(v.get_double().get(seconds), key, "a number of seconds");
      if (!(seconds >= 0) || seconds > max_retry_backoff_seconds)
        fail("field 'retry_backoff' must be a number of seconds from 0 to 3600");
      spec.retry_backoff = std::chrono::milliseconds(std::llround(seconds * 1000));
    } else if (key == "id") {
      std::uint64_t n = 0;
      check(v.get_uint64().get(n), key, "an integer");
      if (n < client_id_min || n > client_id_max)
        fail("field 'id' must be an integer from 4294967296 to 9007199254740991 (2^32 to 2^53 - 1)");
      spec.requested_id = n;
    } else if (key == "detach") {
      check(v.get_bool().get(spec.detach), key, "true or false");
    } else if (key == "priority") {
      std::int64_t n = 0;
      check(v.get_int64().get(n), key, "an integer");
      if (n < min_priority || n > max_priority)
        fail("field 'priority' must be an integer from -1000000000 to 1000000000");
      spec.priority = static_cast<int>(n);
    } else {
      fail("unknown field '" + std::string(key) + "'");
    }
  }

  // On a session, results are named by tag: a job without one could never be told apart.
  if (functions.session != nullptr && !have_tag) fail("field 'tag' is required on a session");
  const std::pair<argument_field*, const char*> fields[] = {{&args, "args"}, {&kwargs, "kwargs"}, {&globals, "globals"}};
  for (const auto& [a, name] : fields) {
    if (a->kind == argument_field::absent) continue;
    const bool is_args = a == &args;
    if (spec.codec == arg_codec::json && a->kind != (is_args ? argument_field::array : argument_field::object))
      fail("field '" + std::string(name) + "' must be " + (is_args ? "an array" : "an object") +
           " with codec \"json\"");
    if (spec.codec == arg_codec::pickle) {
      if (a->kind == argument_field::array)
        fail("field '" + std::string(name) + "' must be a base64 string of a pickled " +
             (is_args ? "tuple" : "dict") + " with codec \"pickle\" (or its parts, docs/rest.md)");
      // (A peer gets the parts of one in shared memory inline: job_message_parts.)
      if (a->kind == argument_field::object) {
        bool in_client_memory = false;
        a->rewritten = check_pickled_parts(a->raw, name, shm_prefix, functions.attached(), &in_client_memory);
        if (!a->rewritten.empty()) spec.attachments = functions.session->attached;
        if (in_client_memory && spec.detach)
          fail("a detached job's '" + std::string(name) + "' cannot be in the session's shared memory, "
               "which goes with the session: send it inline or as attachments");
      }
    }
  }
  if (spec.detach)
    for (const auto& ref : spec.refs)
      if (ref->in_client_memory)
        fail("a detached job cannot take a value put in the session's shared memory, which goes "
             "with the session");
  spec.args = args.text();
  spec.kwargs = kwargs.text();
  spec.globals = globals.text();

  if (!spec.refs.empty() && spec.codec != arg_codec::pickle)
    fail("field 'refs' needs codec \"pickle\": pickles name the values");
  if (spec.map) {
    if (args.kind == argument_field::absent) fail("a map job (\"map\": true) needs 'args': one argument list per call");
    if (spec.codec == arg_codec::json && !args_are_arrays)
      fail("field 'args' of a map job must be an array of argument arrays, one per call");
  }

  if (!have_function && fn_id) {
    // A reference to a function this session defined earlier.
    if (have_source || !depfuncs.empty() || !def.modules.empty())
      fail("a job that references 'fn_id' without 'function' carries no source, depfuncs or modules");
    spec.function = functions.find_function(*fn_id);
    if (!spec.function) fail("unknown fn_id " + std::to_string(*fn_id));
    return spec;
  }
  if (!have_function) fail("field 'function' is required");
  check_entry_name(def.entry, !have_source);
  if (!have_source && !depfuncs.empty()) fail("field 'depfuncs' needs 'source'");
  for (const auto& dep : depfuncs) {
    def.source += "\n";
    def.source += dep;
  }
  def.hash = function_hash(def.entry, def.modules, def.source);
  spec.function = intern(std::move(def));
  if (fn_id) functions.staged_functions[*fn_id] = spec.function;
  return spec;
}

od::document iterate(std::string& body) {
  thread_local od::parser parser;
  const std::size_t length = body.size();
  body.reserve(length + simdjson::SIMDJSON_PADDING);
  od::document doc;
  if (auto ec = parser.iterate(body.data(), length, body.capacity()).get(doc))
    fail(std::string("invalid JSON: ") + simdjson::error_message(ec));
  return doc;
}

void check_no_trailing_content(od::document& doc) {
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS)
    fail("invalid JSON: trailing content after the body");
}

// "tag" <spaces> : <spaces> N, wherever it appears; for batches too broken to parse.
std::vector<std::int64_t> scan_for_tags(std::string_view text) {
  std::vector<std::int64_t> tags;
  constexpr std::string_view key = "\"tag\"";
  for (auto at = text.find(key); at != std::string_view::npos; at = text.find(key, at + 1)) {
    std::size_t i = at + key.size();
    auto skip_spaces = [&] {
      while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
    };
    skip_spaces();
    if (i >= text.size() || text[i] != ':') continue;
    ++i;
    skip_spaces();
    std::int64_t tag = 0;
    if (std::from_chars(text.data() + i, text.data() + text.size(), tag).ec == std::errc())
      tags.push_back(tag);
  }
  return tags;
}

}  // namespace

std::vector<std::int64_t> tags_of_refused_batch(std::string& body) {
  try {
    std::vector<std::int64_t> tags;
    od::document doc = iterate(body);
    od::array arr;
    if (doc.get_array().get(arr)) fail("not an array");
    for (auto element : arr) {
      od::object obj;
      if (element.get_object().get(obj)) fail("not an object");
      std::int64_t tag = 0;
      if (obj.find_field_unordered("tag").get_int64().get(tag) == simdjson::SUCCESS) tags.push_back(tag);
    }
    check_no_trailing_content(doc);
    return tags;
  } catch (const request_error&) {
    return scan_for_tags(body);
  }
}

session_control parse_control_message(std::string& body, const session_tables& session) {
  constexpr std::string_view expected =
      "a session message is a JSON array of jobs, {\"cancel\": TAG}, {\"put\": ID, \"value\": ...} "
      "or {\"release\": ID}";
  od::document doc;
  try {
    doc = iterate(body);
  } catch (const request_error& e) {
    fail(std::string(expected) + "; this one is " + e.what());
  }
  od::object obj;
  if (auto ec = doc.get_object().get(obj))
    fail(ec == simdjson::INCORRECT_TYPE
             ? std::string(expected)
             : std::string(expected) + "; this one is invalid JSON: " + simdjson::error_message(ec));
  session_control out;
  bool have_kind = false, have_value = false;
  for (auto field : obj) {
    std::string_view key;
    if (field.unescaped_key().get(key)) fail(std::string(expected));
    od::value v;
    if (field.value().get(v)) fail(std::string(expected));
    if (key == "value") {
      out.value = checked_pickle_value(v, "value", session.shm_prefix, session.attached.get(),
                                       out.value_in_client_memory);
      have_value = true;
      continue;
    }
    if (have_kind) fail(std::string(expected));
    if (key == "cancel") out.what = session_control::kind::cancel;
    else if (key == "put") out.what = session_control::kind::put;
    else if (key == "release") out.what = session_control::kind::release;
    else fail(std::string(expected));
    have_kind = true;
    if (v.get_int64().get(out.id))
      fail(key == "cancel" ? "\"cancel\" takes a job's tag, an integer"
                           : "\"" + std::string(key) + "\" takes a value's number, an integer");
  }
  if (!have_kind || have_value != (out.what == session_control::kind::put)) fail(std::string(expected));
  try {
    check_no_trailing_content(doc);
  } catch (const request_error& e) {
    fail(std::string(expected) + "; this one is " + e.what());
  }
  return out;
}

job_submission parse_job_submission(std::string& body, const function_interner& intern,
                                    session_tables* session) {
  od::document doc = iterate(body);
  simdjson::error_code ec;
  batch_tables functions{session, {}, {}};

  job_submission out;
  od::json_type type{};
  if ((ec = doc.type().get(type))) fail(std::string("invalid JSON: ") + simdjson::error_message(ec));
  if (type == od::json_type::array) {
    out.batch = true;
    od::array arr;
    check(doc.get_array().get(arr), "(body)", "an array of job objects");
    std::size_t index = 0;
    for (auto element : arr) {
      od::object obj;
      if (element.get_object().get(obj))
        fail("batch element " + std::to_string(index) + " must be a job object");
      try {
        std::int64_t tag = 0;
        out.jobs.push_back(parse_one(obj, intern, functions, tag));
        out.tags.push_back(tag);
      } catch (const request_error& e) {
        fail("batch element " + std::to_string(index) + ": " + e.what());
      }
      ++index;
    }
    if (out.jobs.empty()) fail("a batch must hold at least one job");
  } else if (type == od::json_type::object) {
    od::object obj;
    check(doc.get_object().get(obj), "(body)", "a job object");
    std::int64_t tag = 0;
    out.jobs.push_back(parse_one(obj, intern, functions, tag));
    out.tags.push_back(tag);
  } else {
    fail("the body must be a job object or an array of job objects");
  }
  check_no_trailing_content(doc);
  if (session != nullptr) functions.commit();
  return out;
}

}  // namespace ppgate
