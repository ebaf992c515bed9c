#include "shared_memory.hpp"

#include <simdjson.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace ppgate::shared_memory {

namespace {
constexpr const char* folder = "/dev/shm";
constexpr std::size_t max_suffix = 64;

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}
}  // namespace

const std::string& host_identity() {
  static const std::string identity = [] {
    struct stat st {};
    if (::stat(folder, &st) != 0 || !S_ISDIR(st.st_mode)) return std::string();
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" + std::to_string(::getuid());
  }();
  return identity;
}

std::string node_prefix() { return "ppgate-" + std::to_string(::getpid()) + "-"; }

std::string new_session_prefix() {
  static std::atomic<std::uint64_t> serial{0};
  return node_prefix() + std::to_string(++serial) + "-";
}

bool is_session_file(std::string_view name, std::string_view prefix) {
  if (prefix.empty() || !name.starts_with(prefix)) return false;
  const std::string_view suffix = name.substr(prefix.size());
  if (suffix.empty() || suffix.size() > max_suffix) return false;
  for (const char c : suffix)
    if (!is_name_char(c)) return false;
  return true;
}

std::size_t remove_files(std::string_view prefix) {
  if (prefix.empty()) return 0;
  DIR* dir = ::opendir(folder);
  if (dir == nullptr) return 0;
  std::size_t removed = 0;
  const int dir_fd = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    const std::string_view name(entry->d_name);
    if (name.starts_with(prefix) && ::unlinkat(dir_fd, entry->d_name, 0) == 0) ++removed;
  }
  ::closedir(dir);
  return removed;
}

namespace {

void append_base64(std::string& out, const unsigned char* p, std::size_t n) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  out.reserve(out.size() + (n + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const unsigned v = unsigned(p[i]) << 16 | unsigned(p[i + 1]) << 8 | p[i + 2];
    const char quad[4] = {alphabet[v >> 18], alphabet[(v >> 12) & 63], alphabet[(v >> 6) & 63], alphabet[v & 63]};
    out.append(quad, 4);
  }
  if (i < n) {
    const unsigned v = unsigned(p[i]) << 16 | (i + 1 < n ? unsigned(p[i + 1]) << 8 : 0u);
    out += alphabet[v >> 18];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
}

// Reads [offset, offset + size) of an open file, whole.
void read_range(int fd, std::uint64_t offset, std::uint64_t size, std::string& into, std::string_view name) {
  into.resize(size);
  std::uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, into.data() + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw error("shared memory " + std::string(name) + " ends before its part [" + std::to_string(offset) +
                  ", " + std::to_string(size) + "]");
    done += static_cast<std::uint64_t>(n);
  }
}

}  // namespace

binary_message split_binary_message(std::string_view message) {
  if (message.size() < 4) throw error("a binary message starts with the 4-byte length of its JSON part");
  const auto* p = reinterpret_cast<const unsigned char*>(message.data());
  const std::size_t json_size = std::size_t(p[0]) | std::size_t(p[1]) << 8 | std::size_t(p[2]) << 16 |
                                std::size_t(p[3]) << 24;
  if (json_size > message.size() - 4)
    throw error("a binary message's JSON part (" + std::to_string(json_size) + " bytes) is longer than the message");
  return {message.substr(4, json_size), message.substr(4 + json_size)};
}

std::string binary_message_length(std::size_t json_size) {
  const auto n = static_cast<std::uint32_t>(json_size);
  return {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff), static_cast<char>((n >> 16) & 0xff),
          static_cast<char>((n >> 24) & 0xff)};
}

node_file::~node_file() { ::unlink((std::string(folder) + "/" + name_).c_str()); }

std::shared_ptr<const node_file> write_node_file(std::string name, std::string_view data) {
  write_file(name, data);
  return std::make_shared<const node_file>(std::move(name), data.size());  // removes it, from here on
}

void write_file(const std::string& name, std::string_view data) {
  const std::string path = std::string(folder) + "/" + name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw error("cannot create shared memory " + name + ": " + std::strerror(errno));
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      ::close(fd);
      ::unlink(path.c_str());
      throw error("cannot write " + std::to_string(data.size()) + " bytes to shared memory: " + std::strerror(err));
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

std::string attach_result(std::string_view in_file, std::string& attachments) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string_view name;
  simdjson::dom::array parts;
  if (parser.parse(in_file.data(), in_file.size()).get(doc) || doc["shm"].get_string().get(name) ||
      doc["parts"].get_array().get(parts))
    throw error("a worker's result names its file wrongly");
  attachments.resize((attachments.size() + 63) / 64 * 64);
  const std::uint64_t base = attachments.size();
  take_file(name, attachments);
  std::string out = R"("result":{"attached":true,"parts":[)";
  bool first = true;
  for (const simdjson::dom::element range : parts) {
    std::uint64_t offset = 0, size = 0;
    if (range.at(0).get_uint64().get(offset) || range.at(1).get_uint64().get(size) ||
        offset + size > attachments.size() - base)
      throw error("a worker's result names parts outside its file");
    if (!first) out += ',';
    first = false;
    out += '[' + std::to_string(base + offset) + ',' + std::to_string(size) + ']';
  }
  out += "]}";
  return out;
}

std::string result_to_file(std::string_view outcome, std::string_view attachments, const std::string& name) {
  constexpr std::string_view head = R"("result":{"attached":true,"parts":)";
  const auto end = outcome.find('}');
  if (!outcome.starts_with(head) || end == std::string_view::npos)
    throw error("a result in parts that is not {\"attached\": true, \"parts\": ...}");
  const std::string_view parts = outcome.substr(head.size(), end - head.size());
  simdjson::dom::parser parser;
  simdjson::dom::array ranges;
  if (parser.parse(parts.data(), parts.size()).get(ranges)) throw error("a result's parts are not [[offset, size], ...]");
  for (const simdjson::dom::element range : ranges) {
    std::uint64_t offset = 0, size = 0;
    if (range.at(0).get_uint64().get(offset) || range.at(1).get_uint64().get(size) ||
        offset + size > attachments.size())
      throw error("a result's part lies outside its attachments");
  }
  write_file(name, attachments);
  return std::string(R"("result":{"shm":")") + name + R"(","parts":)" + std::string(parts) + "}" +
         std::string(outcome.substr(end + 1));
}

void take_file(std::string_view name, std::string& out) {
  const std::string path = std::string(folder) + "/" + std::string(name);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error("cannot read shared memory " + std::string(name) + ": " + std::strerror(errno));
  ::unlink(path.c_str());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw error("cannot read shared memory " + std::string(name) + ": " + std::strerror(errno));
  }
  const std::size_t at = out.size(), size = static_cast<std::size_t>(st.st_size);
  out.resize(at + size);
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out.data() + at + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      out.resize(at);
      throw error("shared memory " + std::string(name) + " ended early");
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

namespace {

// Calls each(fd, name, offset, size) for the parts of a pickle in a shared-memory file, between
// begin() and end(), and returns true; returns false for any other pickle (left to the caller).
template <typename Begin, typename Each, typename End>
bool for_each_part_in_file(std::string_view field_json, Begin begin, Each each, End end) {
  const auto first = field_json.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || field_json[first] != '{') return false;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string_view name;
  simdjson::dom::array parts;
  // The parser checked the shape when the job came in; anything else here is passed on as is.
  if (parser.parse(field_json.data(), field_json.size()).get(doc) || doc["shm"].get_string().get(name) ||
      doc["parts"].get_array().get(parts))
    return false;
  const int fd = ::open((std::string(folder) + "/" + std::string(name)).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error("cannot read shared memory " + std::string(name) + ": " + std::strerror(errno));
  try {
    begin();
    for (const simdjson::dom::element range : parts)
      each(fd, name, range.at(0).get_uint64().value_unsafe(), range.at(1).get_uint64().value_unsafe());
    end();
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return true;
}

}  // namespace

void append_inline(std::string& out, std::string_view field_json) {
  std::string part;
  bool first_part = true;
  const bool in_file = for_each_part_in_file(
      field_json, [&] { out += "{\"parts\":["; },
      [&](int fd, std::string_view name, std::uint64_t offset, std::uint64_t size) {
        read_range(fd, offset, size, part, name);
        if (!first_part) out += ',';
        first_part = false;
        out += '"';
        append_base64(out, reinterpret_cast<const unsigned char*>(part.data()), part.size());
        out += '"';
      },
      [&] { out += "]}"; });
  if (!in_file) out.append(field_json);
}

void append_attached(std::string& out, std::string_view field_json, std::string& attachments) {
  std::string part;
  bool first_part = true;
  const bool in_file = for_each_part_in_file(
      field_json, [&] { out += "{\"attached\":true,\"parts\":["; },
      [&](int fd, std::string_view name, std::uint64_t offset, std::uint64_t size) {
        attachments.resize((attachments.size() + 63) / 64 * 64);
        const std::size_t base = attachments.size();
        read_range(fd, offset, size, part, name);
        attachments += part;
        if (!first_part) out += ',';
        first_part = false;
        out += '[' + std::to_string(base) + ',' + std::to_string(size) + ']';
      },
      [&] { out += "]}"; });
  if (!in_file) out.append(field_json);
}

}  // namespace ppgate::shared_memory
