// Minimal JSON output helpers: ppgate writes JSON by appending to std::string.
#pragma once

#include <string>
#include <string_view>

namespace ppgate {

// Appends `s` as a quoted JSON string (UTF-8 passes through; control characters are escaped;
// invalid UTF-8 bytes are replaced by U+FFFD so the output is always valid JSON).
void append_json_string(std::string& out, std::string_view s);

// Appends a number the way JSON wants it (no NaN/inf: they become null).
void append_json_number(std::string& out, double v);

// Python's repr() of a float: shortest round-trip digits, always with a '.' or an exponent.
std::string python_float_repr(double v);

// {"error":{"message":...}} : the body of every REST error.
std::string json_error_body(std::string_view message);

}  // namespace ppgate
