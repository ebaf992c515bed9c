#include "event_loop.hpp"

#include <boost/asio/io_context.hpp>

namespace ppgate {

void run_event_loop(net::io_context& io, const std::function<bool()>& keep_polling) {
  for (;;) {
    if (io.poll_one() > 0) continue;  // ran a ready handler (poll_one checks epoll without blocking)
    if (io.stopped()) return;         // stop() was called, or no work is left
    if (keep_polling()) continue;
    if (io.run_one() == 0) return;    // sleeps until a handler is ready, then runs it
  }
}

}  // namespace ppgate
