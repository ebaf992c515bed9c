// JSON output: ppgate writes JSON by appending to a std::string, through json_writer (objects and
// arrays with their commas) and the helpers below it.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include <charconv>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>

namespace ppgate {

// Appends `s` as a quoted JSON string (UTF-8 passes through; control characters are escaped;
// invalid UTF-8 bytes are replaced by U+FFFD so the output is always valid JSON).
void append_json_string(std::string& out, std::string_view s);

// Appends a number the way JSON wants it (no NaN/inf: they become null).
void append_json_number(std::string& out, double v);

// Writes one JSON value into `out`, commas included:
//   json_writer(out).begin_object().member("id", 7).key("tags").begin_array().value(1).end_array().end_object();
// Keys are names written by this program: ASCII that needs no escaping. Strings are escaped.
// `raw` splices a value that is JSON already; `raw_items` splices items already written and
// joined by commas — members ("a":1,"b":2) into an object (a job's outcome is kept that way), or
// elements into an array. Nothing checks that begins and ends pair up: each function writes
// its value whole.
class json_writer {
 public:
  explicit json_writer(std::string& out) : out_(out) {}
  // Continues a list of items (array elements or object members) that `out` already ends with
  // when `after_items`: the first value written gets a comma before it.
  json_writer(std::string& out, bool after_items) : out_(out), first_(!after_items) {}

  json_writer& begin_object() { return open('{'); }
  json_writer& end_object() { return close('}'); }
  json_writer& begin_array() { return open('['); }
  json_writer& end_array() { return close(']'); }

  json_writer& key(std::string_view k) {
    separate();
    out_ += '"';
    out_ += k;
    out_ += "\":";
    after_key_ = true;
    return *this;
  }

  json_writer& value(std::string_view s) {
    separate();
    append_json_string(out_, s);
    return *this;
  }
  json_writer& value(const char* s) { return value(std::string_view(s)); }
  json_writer& value(const std::string& s) { return value(std::string_view(s)); }
  json_writer& value(bool b) {
    separate();
    out_ += b ? "true" : "false";
    return *this;
  }
  json_writer& value(double v) {
    separate();
    append_json_number(out_, v);
    return *this;
  }
  template <std::integral T>
    requires(!std::same_as<T, bool>)
  json_writer& value(T v) {
    separate();
    char buf[24];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, end);
    return *this;
  }
  json_writer& null() {
    separate();
    out_ += "null";
    return *this;
  }
  json_writer& raw(std::string_view json) {
    separate();
    out_ += json;
    return *this;
  }
  json_writer& raw_items(std::string_view items) {
    if (items.empty()) return *this;
    separate();
    out_ += items;
    return *this;
  }

  template <class T>
  json_writer& member(std::string_view k, const T& v) {
    return key(k).value(v);
  }

 private:
  // A comma before every item of a container but its first; none after a key.
  void separate() {
    if (after_key_) {
      after_key_ = false;
    } else if (!first_) {
      out_ += ',';
    }
    first_ = false;
  }
  json_writer& open(char c) {
    separate();
    out_ += c;
    first_ = true;
    return *this;
  }
  json_writer& close(char c) {
    out_ += c;
    first_ = false;
    return *this;
  }

  std::string& out_;
  bool first_ = true;       // nothing written yet in the innermost open container (or at all)
  bool after_key_ = false;  // a key was written; its value comes next
};

// Python's repr() of a float: shortest round-trip digits, always with a '.' or an exponent.
std::string python_float_repr(double v);

// {"error":{"message":...}} : the body of every REST error.
std::string json_error_body(std::string_view message);

}  // namespace ppgate
