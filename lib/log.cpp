#include "log.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>

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

void write(level l, const std::string& line) {
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::fprintf(stderr, "%s ppgate %s: %s\n", stamp, names[static_cast<int>(l)], line.c_str());
}

}  // namespace ppgate::log
