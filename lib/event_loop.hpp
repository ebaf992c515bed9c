// The node's event loop: io_context::run(), with busy polling while a caller asks for it.
#pragma once

#include "net.hpp"

#include <functional>

namespace ppgate {

// Runs `io` until it stops or runs out of work, like io.run(), except that while `keep_polling()`
// holds, the thread polls for events instead of sleeping in epoll_wait.
//
// Why: waking a sleeping process costs tens of microseconds on a VM (an inter-processor
// interrupt to a halted vCPU), more than a trivial job's whole run. A client submitting one short
// job at a time sends its next job a few tens of microseconds after it received a result; a node
// that polls meanwhile sees it at once (node_server::should_poll says when).
void run_event_loop(net::io_context& io, const std::function<bool()>& keep_polling);

}  // namespace ppgate
