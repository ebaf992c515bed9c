#include "log.hpp"

#include "json_writer.hpp"

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <ctime>
#include <unistd.h>

namespace ppgate::log {

level& threshold() {
  static level current = level::info;
  return current;
}

bool parse_level(std::string_view name, level& out) {
  if (name == "debug") out = level::debug;
  else if (name == "info") out = level::info;
  else if (name == "warn" || name == "warning") out = level::warn;
  else if (name == "error") out = level::error;
  else return false;
  return true;
}

format& output_format() {
  static format current = format::text;
  return current;
}

void write(level l, const std::string& line) {
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  if (output_format() == format::text) {
    std::fprintf(stderr, "%sZ ppgate %s: %s\n", stamp, names[static_cast<int>(l)], line.c_str());
    return;
  }
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  char time_text[48];
  std::snprintf(time_text, sizeof time_text, "%s.%03dZ", stamp, static_cast<int>(millis));
  std::string out;
  json_writer(out)
      .begin_object()
      .member("time", std::string_view(time_text))
      .member("level", std::string_view(names[static_cast<int>(l)]))
      .member("pid", static_cast<std::int64_t>(::getpid()))
      .member("message", std::string_view(line))
      .end_object();
  out += '\n';
  std::fwrite(out.data(), 1, out.size(), stderr);  // one write: lines from a node never interleave
}

}  // namespace ppgate::log
