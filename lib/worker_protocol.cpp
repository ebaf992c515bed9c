#include "worker_protocol.hpp"

#include "frame.hpp"

#include <charconv>

namespace ppgate {

void append_worker_frame(std::string& out, std::uint64_t seq, std::string_view body) {
  char prefix[24];
  auto [end, ec] = std::to_chars(prefix, prefix + sizeof prefix - 1, seq);
  *end++ = ' ';
  append_frame(out, std::string_view(prefix, static_cast<std::size_t>(end - prefix)), body);
}

worker_reply parse_worker_reply(std::string_view frame) {
  worker_reply r;
  const auto [p, ec] = std::from_chars(frame.data(), frame.data() + frame.size(), r.received);
  if (ec != std::errc() || p == frame.data() + frame.size() || *p != ' ')
    throw frame_error("a worker reply without the sequence number of the frames it received");
  frame.remove_prefix(static_cast<std::size_t>(p - frame.data()) + 1);
  if (frame.starts_with("lost ")) {
    r.frames_taken = true;
    std::from_chars(frame.data() + 5, frame.data() + frame.size(), r.last_job);
    return r;
  }
  if (frame.starts_with("running ")) {
    r.probe_answer = true;
    const auto [q, bad] = std::from_chars(frame.data() + 8, frame.data() + frame.size(), r.taken_up);
    if (bad != std::errc() || q != frame.data() + frame.size()) throw frame_error("a bad answer to a probe");
    return r;
  }
  r.end = parse_reported_end(frame);
  return r;
}

}  // namespace ppgate
