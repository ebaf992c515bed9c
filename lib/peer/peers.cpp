#include "peers.hpp"

namespace ppgate {

peers::peers(net::any_io_executor ex, scheduler& sched, local_pool& pool, peers_options opts,
             peer_settings& settings)
    : ex_(ex), sched_(sched), pool_(pool), opts_(std::move(opts)), settings_(settings) {}

void peers::start() {
  if (!opts_.listen_host.empty()) {
    server_ = std::make_unique<peer_server>(ex_, sched_, pool_, settings_,
                                            [this](peer_channel& authenticated) { adopt_joined(authenticated); });
    server_->listen({net::ip::make_address(opts_.listen_host), opts_.listen_port});
    if (opts_.listen_port == 0)  // the name peers know this node by needs the real port
      settings_.name = opts_.listen_host + ":" + std::to_string(server_->port());
  }
  for (const auto& [host, port] : opts_.dial) dial(host, port);
  for (const auto& [host, port] : opts_.join) {
    heads_.push_back(std::make_shared<head_link>(ex_, sched_, pool_, host, port, settings_));
    heads_.back()->launch();
  }
  if (opts_.discover) {
    discovery_options d;
    d.cluster = opts_.cluster;
    d.port = opts_.discover_port;
    d.announce = server_ ? settings_.name : std::string{};
    d.bind_host = opts_.listen_host;
    discovery_ = std::make_unique<discovery>(
        ex_, d, [this](const std::string& host, std::uint16_t port) { dial(host, port); });
    discovery_->start();
  }
}

void peers::stop() {
  if (server_) server_->stop();
  if (discovery_) discovery_->stop();
  for (auto& node : dialed_) node->stop();
  for (auto& node : joined_) node->stop();
  for (auto& head : heads_) head->stop();
}

void peers::capacity_changed() {
  if (server_) server_->capacity_changed();
  for (auto& head : heads_) head->capacity_changed();
}

std::size_t peers::drain(std::string_view why) {
  std::size_t handed = server_ ? server_->drain(why) : 0;
  for (auto& head : heads_) handed += head->drain(why);
  return handed;
}

std::size_t peers::remote_slots() const {
  std::size_t n = 0;
  for (const auto& node : dialed_) n += node->slot_count();
  for (const auto& node : joined_) n += node->slot_count();
  return n;
}

void peers::adopt_joined(peer_channel& authenticated) {
  const std::string& name = authenticated.peer_name();
  for (const auto& node : joined_)
    if (node->name() == name) return node->adopt(authenticated);
  joined_.push_back(std::make_shared<peer_node>(peer_node::joined_node{}, ex_, sched_, name, settings_,
                                                opts_.inflight_per_slot));
  joined_.back()->adopt(authenticated);
}

void peers::dial(const std::string& host, std::uint16_t port) {
  const std::string name = host + ":" + std::to_string(port);
  for (const auto& node : dialed_)
    if (node->name() == name) return;
  auto node = std::make_shared<peer_node>(ex_, sched_, host, port, settings_, opts_.inflight_per_slot);
  dialed_.push_back(node);
  node->launch();
}

}  // namespace ppgate
