#include "discovery.hpp"

#include "log.hpp"

#include <charconv>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sstream>

namespace ppgate {

namespace {

constexpr std::string_view prefix = "PPGATE-DISCOVER 1 ";

// The broadcast addresses to announce on: the interface holding `bind_host`, or every
// broadcast-capable IPv4 interface for 0.0.0.0.
std::vector<net::ip::address_v4> broadcast_addresses(const std::string& bind_host) {
  std::vector<net::ip::address_v4> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  const bool any = bind_host.empty() || bind_host == "0.0.0.0";
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    if (!(i->ifa_flags & IFF_UP) || !(i->ifa_flags & IFF_BROADCAST) || i->ifa_broadaddr == nullptr) continue;
    const auto* addr = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
    const auto* brd = reinterpret_cast<const sockaddr_in*>(i->ifa_broadaddr);
    const net::ip::address_v4 own(ntohl(addr->sin_addr.s_addr));
    if (!any && own.to_string() != bind_host) continue;
    out.emplace_back(ntohl(brd->sin_addr.s_addr));
  }
  ::freeifaddrs(list);
  return out;
}

}  // namespace

discovery::discovery(net::any_io_executor ex, discovery_options opts, found_handler found)
    : ex_(ex), opts_(std::move(opts)), found_(std::move(found)), socket_(ex), ticker_(ex) {}

void discovery::start() {
  socket_.open(net::ip::udp::v4());
  socket_.set_option(net::socket_base::reuse_address(true));
  socket_.set_option(net::socket_base::broadcast(true));
  socket_.bind({net::ip::address_v4::any(), opts_.port});
  if (!opts_.announce.empty()) known_.insert(opts_.announce);  // never dial ourselves
  net::co_spawn(ex_, listen_loop(), log::on_failure("discovery"));
  if (!opts_.announce.empty()) announce();
}

void discovery::stop() {
  stopped_ = true;
  boost::system::error_code ignored;
  ticker_.cancel();
  socket_.close(ignored);
}

void discovery::announce() {
  if (stopped_) return;
  const std::string message = std::string(prefix) + opts_.cluster + " " + opts_.announce;
  for (const auto& address : broadcast_addresses(opts_.bind_host)) {
    boost::system::error_code ec;
    socket_.send_to(net::buffer(message), {address, opts_.port}, 0, ec);
    if (ec) log::debug("discovery: cannot announce to ", address.to_string(), ": ", ec.message());
  }
  ticker_.expires_after(opts_.interval);
  ticker_.async_wait([this](boost::system::error_code ec) {
    if (!ec) announce();
  });
}

net::awaitable<void> discovery::listen_loop() {
  char buf[512];
  while (!stopped_) {
    net::ip::udp::endpoint from;
    auto [ec, n] = co_await socket_.async_receive_from(net::buffer(buf), from, use_nothrow_awaitable);
    if (ec == net::error::operation_aborted || stopped_) co_return;
    if (ec) continue;
    // "PPGATE-DISCOVER 1 <cluster> <host:port>"; anything else is ignored.
    const std::string_view text(buf, n);
    if (!text.starts_with(prefix)) continue;
    std::istringstream in{std::string(text.substr(prefix.size()))};
    std::string cluster, address;
    in >> cluster >> address;
    if (cluster != opts_.cluster || address.empty() || known_.count(address)) continue;
    const auto colon = address.rfind(':');
    std::uint16_t port = 0;
    if (colon == std::string::npos ||
        std::from_chars(address.data() + colon + 1, address.data() + address.size(), port).ec != std::errc() ||
        port == 0)
      continue;
    known_.insert(address);
    log::info("discovered ", address, " (cluster ", cluster, "); dialing it");
    found_(address.substr(0, colon), port);
  }
}

}  // namespace ppgate
