// Shared memory between a session's client and this node's workers, when both are on one host
// (docs/rest.md, "Shared memory"). Big pickled arguments and results then travel as files in
// /dev/shm that the client and the worker map: the node passes their names and never holds the
// bytes. Each session that may use it gets a prefix of its own; it may name only files under
// that prefix, and the node removes what is left under it when the session ends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ppgate::shared_memory {

// Who shares this node's /dev/shm: "<st_dev>:<st_ino>:<uid>" of the folder as this process sees
// it, so a client on another host, in another mount namespace or of another user does not match.
// Empty when there is no /dev/shm.
const std::string& host_identity();

// A prefix no other session of any node has: "ppgate-<pid>-<serial>-".
std::string new_session_prefix();

// The prefix of every session's files of this node: what remove_files at exit sweeps.
std::string node_prefix();

// True for the name of a file of the session `prefix`: the prefix, then 1 to 64 of
// [A-Za-z0-9_-]. Never a path: no slash, no dot.
bool is_session_file(std::string_view name, std::string_view prefix);

// Removes every file in /dev/shm whose name starts with `prefix`; returns how many.
std::size_t remove_files(std::string_view prefix);

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A file this node wrote in /dev/shm for its workers to map (the attachments of a binary
// session message, docs/rest.md "Binary messages"); removed when the last job or value that
// takes it lets go.
class node_file {
 public:
  node_file(std::string name, std::uint64_t size) : name_(std::move(name)), size_(size) {}
  ~node_file();
  node_file(const node_file&) = delete;
  node_file& operator=(const node_file&) = delete;
  const std::string& name() const { return name_; }
  std::uint64_t size() const { return size_; }

 private:
  std::string name_;
  std::uint64_t size_;
};

// Writes `data` to a new file `name` (readable by this user only). Throws error.
std::shared_ptr<const node_file> write_node_file(std::string name, std::string_view data);

// Appends the whole file `name` to `out` and removes it (a worker's big result for a client on
// another host). Throws error.
void take_file(std::string_view name, std::string& out);

// A binary message (docs/rest.md, "Binary messages"): [4-byte little-endian length N][N bytes of
// JSON][attachments]. Sessions and peer links carry them.
struct binary_message {
  std::string_view json;
  std::string_view attachments;
};
// Throws error saying what is wrong with a message that is not one.
binary_message split_binary_message(std::string_view message);
// The 4-byte length that starts a binary message whose JSON takes `json_size` bytes.
std::string binary_message_length(std::size_t json_size);

// A worker's outcome that starts so has its result in a file: "result":{"shm":NAME,"parts":...}.
inline constexpr std::string_view result_in_file = R"("result":{"shm":")";

// {"shm":NAME,"parts":[[o,s],...]} -> "result":{"attached":true,"parts":[[base+o,s],...]}: the
// file's bytes are appended to `attachments` (from a 64-byte boundary, base) and the file
// removed. Throws error.
std::string attach_result(std::string_view in_file, std::string& attachments);

// "result":{"attached":true,"parts":P}<rest> with `attachments` -> "result":{"shm":NAME,"parts":P}<rest>,
// the attachments written to the file NAME: a peer's big result, for the session that takes it.
// Throws error.
std::string result_to_file(std::string_view outcome, std::string_view attachments, const std::string& name);

// Writes `data` to a new file `name`. Throws error.
void write_file(const std::string& name, std::string_view data);

// A pickle in parts as a field's JSON text (job_parser.cpp, check_pickled_parts): for one in a
// shared-memory file, {"shm": NAME, "parts": [[offset, size], ...]}, appends the same parts read
// from the file, inline, {"parts": ["<base64>", ...]}, for a receiver on another host; any other
// text is appended as it is. Throws error when the file cannot be read.
void append_inline(std::string& out, std::string_view field_json);
// The same, with the parts appended to `attachments` (each at a 64-byte boundary) and the field
// written as {"attached": true, "parts": [[offset, size], ...]}: for a binary message.
void append_attached(std::string& out, std::string_view field_json, std::string& attachments);

}  // namespace ppgate::shared_memory
