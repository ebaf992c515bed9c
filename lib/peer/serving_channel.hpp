// The serving side of an authenticated peer link (the ppserver role): runs the jobs the other
// node sends on this node's own workers and answers with results. Whichever side dialed: a node
// accepts peers on its peer port (peer_server), and a joining node dials its head (head_link).
// Owned through shared_ptr. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "peer_channel.hpp"
#include "scheduler.hpp"
#include "tagged_jobs.hpp"

#include <memory>
#include <string>

namespace ppgate {

class serving_channel : public peer_channel {
 public:
  serving_channel(std::unique_ptr<peer_stream> stream, const peer_settings& settings, scheduler& sched);

  // Tells the other node this node's pool now has `slots` workers (once serving).
  void capacity_changed(std::size_t slots);
  std::size_t open_jobs() const { return jobs_ ? jobs_->open_jobs() : 0; }
  // This node is draining: the other node is told it has no slots, and gets back the jobs that
  // had not started (it runs them elsewhere); the running ones finish.
  std::size_t drain(std::string_view why);  // returns how many jobs went back

 protected:
  // After the handshake: takes jobs until the link ends; then its unfinished jobs are cancelled.
  net::awaitable<void> serve_jobs();

  void on_message(const peer::message& m) override;
  void on_closed() override;

 private:
  scheduler& sched_;
  std::shared_ptr<tagged_jobs> jobs_;
  std::string files_prefix_;  // of this link's files in /dev/shm
  std::uint64_t files_written_ = 0;
};

}  // namespace ppgate
