// What the node and its workers agree on about the replies a worker holds back
// (worker/worker_module.cpp, reply_writer; lib/worker_slot.cpp, probe). No dependencies: the
// worker module includes it too.
#pragma once

#include <csignal>
#include <cstddef>

namespace ppgate {

// A worker holds a finished job's reply back only while at least this many jobs wait behind it
// on its link. So a job fewer than this many from the last one sent can only have started once
// the worker has written every reply before it.
inline constexpr std::size_t jobs_waiting_to_hold_a_reply = 3;

// Real-time signals (SIGRTMIN is past the ones glibc keeps for itself). The timer that bounds how
// long a reply is held, and the node's probe ("where are you?").
inline int worker_hold_timer_signal() { return SIGRTMIN + 4; }
inline int worker_probe_signal() { return SIGRTMIN + 5; }

}  // namespace ppgate
