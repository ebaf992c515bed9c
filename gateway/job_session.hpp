// A job session: one WebSocket client of GET /v1/session that submits jobs in pipelined batches
// and has their results pushed as they end (docs/rest.md, "Sessions"). This is what the Python
// client speaks. One reader and one writer coroutine; only the writer writes. Results waiting to
// be sent are bounded (backpressure): past max_unsent_bytes the reader stops taking submissions
// until the writer makes progress, and a client that reads nothing for --idle-timeout is closed.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "activity.hpp"
#include "http.hpp"
#include "job.hpp"
#include "tagged_jobs.hpp"

#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/stream.hpp>

#include <memory>
#include <optional>
#include <string>

namespace ppgate {

class job_session : public std::enable_shared_from_this<job_session> {
 public:
  job_session(scheduler& sched, const http_limits& limits, std::shared_ptr<activity> seen);

  // Completes the WebSocket handshake for `req` and serves the client until it leaves. Jobs the
  // client submitted and that have not ended are then cancelled: nobody is left to collect them.
  net::awaitable<void> run(beast::tcp_stream stream, http_request req);

 private:
  using ws_stream = beast::websocket::stream<beast::tcp_stream>;

  // Asked for by the client with its view of /dev/shm, answered with the session's file prefix.
  static constexpr std::string_view shared_memory_header = "PPGate-Shared-Memory";
  static constexpr std::string_view max_message_header = "PPGate-Max-Message";
  // Asked for by a client that takes binary results ("1"); answered "1": binary messages are taken.
  static constexpr std::string_view binary_header = "PPGate-Binary";

  // Unsent results past which the session stops reading submissions.
  static constexpr std::size_t max_unsent_bytes = 16u * 1024 * 1024;

  net::awaitable<void> read_loop(ws_stream& ws);
  // Waits while unsent results exceed the bound; false when the client made no progress for the
  // idle timeout (the session then closes).
  net::awaitable<bool> wait_for_drain();
  net::awaitable<void> write_loop(ws_stream& ws);
  // A batch or a control message; `attached`: the file its binary message's attachments went to.
  void handle_message(std::string& text, std::shared_ptr<const shared_memory::node_file> attached);
  void handle_binary(std::string_view message);

  scheduler& sched_;
  http_limits limits_;
  std::shared_ptr<activity> activity_;
  std::string attachments_;  // of the next results message
  std::unique_ptr<tagged_jobs::encoding> encoding_;  // declared first: jobs_ borrows it
  std::shared_ptr<tagged_jobs> jobs_;
  std::optional<net::steady_timer> wake_;  // cancelled to wake the writer
  std::optional<net::steady_timer> drained_;  // cancelled by the writer after each write
  std::size_t writing_bytes_ = 0;  // the message being written, still unsent
  bool closing_ = false;
  std::string files_prefix_;  // this session's files in /dev/shm (shared_memory.hpp)
  bool shm_offered_ = false;  // the client shares this host's /dev/shm: it may name files
  bool binary_results_ = false;  // the client takes big results as attachments of binary messages
  std::uint64_t files_written_ = 0;
};

}  // namespace ppgate
