#include "event_loop.hpp"

#include <boost/asio/io_context.hpp>

namespace ppgate {

void run_event_loop(net::io_context& io, const std::function<bool()>& keep_polling) {
  for (;;) {
    if (keep_polling()) {
      io.poll_one();              // runs a ready handler, if any; checks epoll without blocking
      if (io.stopped()) return;   // stop() was called, or no work is left
    } else if (io.run_one() == 0) {  // sleeps until a handler is ready, then runs it
      return;
    }
  }
}

}  // namespace ppgate
