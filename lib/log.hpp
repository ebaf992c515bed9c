// Leveled logging to stderr. The level is set once at start-up.
#pragma once

#include <iostream>
#include <sstream>
#include <string_view>

namespace ppgate::log {

enum class level { debug = 0, info = 1, warn = 2, error = 3 };

level& threshold();
bool parse_level(std::string_view name, level& out);
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

}  // namespace ppgate::log
