// Leveled logging to stderr. The level is set once at start-up.
#pragma once

#include <exception>
#include <iostream>
#include <sstream>
#include <string_view>

namespace ppgate::log {

enum class level { debug = 0, info = 1, warn = 2, error = 3 };

level& threshold();
bool parse_level(std::string_view name, level& out);

// text: "2026-12-02T05:31:44Z ppgate info: message"; json: one object per line,
// {"time":"2026-12-02T05:31:44.123Z","level":"info","pid":123,"message":"message"} (--log-format).
enum class format { text, json };
format& output_format();
void write(level l, const std::string& line);

template <class... Parts>
void emit(level l, const Parts&... parts) {
  if (l < threshold()) return;
  std::ostringstream s;
  (s << ... << parts);
  write(l, s.str());
}

template <class... P> void debug(const P&... p) { emit(level::debug, p...); }
template <class... P> void info(const P&... p) { emit(level::info, p...); }
template <class... P> void warn(const P&... p) { emit(level::warn, p...); }
template <class... P> void error(const P&... p) { emit(level::error, p...); }

// The completion handler for a coroutine given to co_spawn: an exception that ends it is logged,
// with `what` saying whose it was, instead of being lost.
inline auto on_failure(const char* what) {
  return [what](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      error(what, ": ", ex.what());
    }
  };
}

}  // namespace ppgate::log
