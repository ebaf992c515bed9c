// Fuzz target: what a worker sends the node, as worker_slot reads it: frames in arbitrary
// chunks (the first input byte sets the chunk size), each parsed as a reply.
#include "frame.hpp"
#include "worker_protocol.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>

using namespace ppgate;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t chunk = 1 + data[0];
  frame_reader reader;
  try {
    for (std::size_t at = 1; at < size; at += chunk) {
      reader.feed(reinterpret_cast<const char*>(data) + at, std::min(chunk, size - at));
      std::string_view frame;
      while (reader.next(frame)) {
        try {
          const worker_reply r = parse_worker_reply(frame);
          if (!r.frames_taken && r.end.outcome.size() > frame.size()) __builtin_trap();
        } catch (const frame_error&) {
        }
      }
    }
  } catch (const frame_error&) {
    // an oversized length: the node replaces that worker
  }
  return 0;
}
