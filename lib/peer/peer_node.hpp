// A node this node dials to use its workers (the pp.Server(ppservers=...) role), seen by the
// scheduler as a node named "host:port" with slots. It dials, authenticates, and keeps up to `inflight_per_slot`
// jobs in flight per slot the peer advertises, so throughput is not bound by the round trip: one
// of them any job, the others only short jobs (scheduler::slot_can_prefetch), so long jobs are
// not committed to a busy peer while other slots could take them. It follows the peer's capacity
// as it is resized, forwards cancels, and redials with backoff when the link is lost. Jobs in
// flight on a lost link go back to the queue (scheduler::interrupted).
// A node that joined this one (ppgate serve --join) is a peer_node too, made with `joined_node`:
// it does not dial; each link the joining node opens is adopted, and when one is lost the joining
// node redials.
// Owned through shared_ptr. Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "peer_channel.hpp"
#include "scheduler.hpp"

#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ppgate {

class peer_node : public node, public std::enable_shared_from_this<peer_node> {
 public:
  static constexpr std::size_t default_inflight_per_slot = 8;

  peer_node(net::any_io_executor ex, scheduler& sched, std::string host, std::uint16_t port,
            const peer_settings& settings, std::size_t inflight_per_slot = default_inflight_per_slot);
  struct joined_node {};
  peer_node(joined_node, net::any_io_executor ex, scheduler& sched, std::string name,
            const peer_settings& settings, std::size_t inflight_per_slot = default_inflight_per_slot);
  ~peer_node() override;

  const std::string& name() const override { return name_; }
  std::size_t slot_count() const override { return remote_slots_; }
  const std::string& python_version() const override { return python_version_; }
  bool remote() const override { return true; }

  void launch();  // a dialed node: dials, and redials while not stopped
  // A joined node: takes over a link it opened, once authenticated (a link it had is dropped).
  void adopt(peer_channel& authenticated);
  void stop();
  bool joined() const { return joined_; }
  bool connected() const { return channel_ != nullptr; }
  const std::string& last_error() const { return last_error_; }
  std::size_t busy() const { return running_.size(); }

 private:
  class remote_slot;
  class channel;
  friend class remote_slot;
  friend class channel;

  net::awaitable<void> supervise();
  net::awaitable<void> serve_joined(std::shared_ptr<channel> c);
  void link_up(std::shared_ptr<channel> c, std::size_t slots);
  // Dials and authenticates; returns the channel, or null with last_error_ set.
  net::awaitable<std::shared_ptr<channel>> connect(bool& refused);
  void set_capacity(std::size_t remote_slots);
  void send_job(job& j, remote_slot& s);
  // A job's message, to go in the next run frame.
  void queue_run(std::uint64_t job_id, std::string_view message);
  void flush_runs();
  // A job that could not be sent (its message cannot be made, or is too big) fails.
  void fail_unsent(job& j, bool was_defining, std::string_view type, std::string_view why);
  void forget_refs_defined_by(std::uint64_t job_id);
  void cancel_job(job& j);
  void on_result(std::string_view payload);
  // A result_attached frame; false for one that is not.
  bool on_result_attached(std::string_view payload);
  void link_lost(const std::string& why);

  net::any_io_executor ex_;
  scheduler& sched_;
  std::string host_;
  std::uint16_t port_;
  std::string name_;
  std::string python_version_;  // as the peer's welcome said
  const peer_settings& settings_;
  std::shared_ptr<net::ssl::context> tls_;
  std::size_t inflight_per_slot_;
  std::size_t remote_slots_ = 0;
  std::vector<std::unique_ptr<remote_slot>> slots_;
  std::unordered_map<std::uint64_t, remote_slot*> running_;  // job id (its tag on the link) -> slot
  std::unordered_map<std::string, int> fn_ids_;            // function hash -> fn_id on this link
  int next_fn_id_ = 1;
  std::unordered_map<std::uint64_t, std::string> defining_;  // job id -> hash its message defines
  // Values put once that crossed this link (by key), and the ones each job's message defines: a
  // refused message defined none of them. The peer keeps them while the link lasts.
  std::unordered_set<std::uint64_t> refs_sent_;
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> defining_refs_;
  std::shared_ptr<channel> channel_;
  std::string pending_runs_;  // "[job,job" for the run frame that the posted flush sends
  std::vector<std::uint64_t> pending_ids_;  // its jobs
  bool flush_posted_ = false;
  // Jobs sent in a frame with others, until their result; those refused so go again alone.
  std::unordered_set<std::uint64_t> batched_, alone_;
  static constexpr std::size_t max_run_frame = max_frame_size - 1024;
  std::string last_error_;
  bool stopped_ = false;
  bool linked_before_ = false;  // a link came up before: the next one is a reconnect
  const bool joined_ = false;
  std::optional<net::steady_timer> backoff_;
};

}  // namespace ppgate
