// Namespace aliases and completion tokens shared by every coroutine in ppgate.
// This is the one place that names them.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace boost::beast {}  // declared so the alias below needs no Beast header

namespace ppgate {

namespace net = boost::asio;
namespace beast = boost::beast;  // used in gateway/ only: lib/ stays free of Beast

// Expected errors (EOF, cancellation, timeouts) come back as values; unexpected ones throw.
constexpr auto use_nothrow_awaitable = net::as_tuple(net::use_awaitable);

}  // namespace ppgate
