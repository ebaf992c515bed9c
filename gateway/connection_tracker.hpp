// Open HTTP connections, for --max-connections: how many, from which address, and which of them
// are waiting for a request head (and may be closed to make room for another).
// Shared with each session's coroutine through shared_ptr: a session frame destroyed with the
// io_context, after the listener, still holds its count safely.
// Distinct objects: safe. Shared objects: unsafe.
#pragma once

#include "activity.hpp"
#include "net.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <list>
#include <memory>
#include <unordered_map>

namespace ppgate {

class connection_tracker {
 public:
  explicit connection_tracker(std::shared_ptr<activity> seen) : activity_(std::move(seen)) {}

  std::size_t open() const { return open_; }
  std::size_t open_from(const net::ip::address& a) const {
    const auto it = open_by_address_.find(a);
    return it == open_by_address_.end() ? 0 : it->second;
  }

  // At the limit, makes room for a connection from `newcomer`: closes the oldest connection
  // waiting for a head among those of the address that holds the most connections — so each
  // address keeps a fair share, and one that opens connections by the hundred closes its own.
  // False (refuse the newcomer) when none waits, or when the newcomer's address already holds
  // more than any address it could take room from.
  bool make_room_for(const net::ip::address& newcomer);

  class scoped {  // one open connection, for as long as this lives
   public:
    scoped(std::shared_ptr<connection_tracker> t, const net::ip::address& from);
    ~scoped();
    scoped(const scoped&) = delete;
    scoped& operator=(const scoped&) = delete;

   private:
    std::shared_ptr<connection_tracker> t_;
    net::ip::address from_;
  };

 private:
  // Connections waiting for a request head (new, slow or idle keep-alive ones), oldest first. At
  // the connection limit one of them is closed to make room, so clients that send nothing (or
  // send slowly) cannot lock out those that send a request at once.
  struct waiting_entry {
    net::ip::tcp::socket* socket;
    net::ip::address address;
    bool* evicted;
  };

 public:
  class waiting {  // one connection waiting for a head, for as long as this lives
   public:
    waiting(connection_tracker& t, net::ip::tcp::socket& s, const net::ip::address& from);
    ~waiting();
    waiting(const waiting&) = delete;
    waiting& operator=(const waiting&) = delete;

   private:
    connection_tracker& t_;
    std::list<waiting_entry>::iterator it_;
    bool evicted_ = false;
  };

 private:
  std::shared_ptr<activity> activity_;
  std::size_t open_ = 0;
  std::unordered_map<net::ip::address, std::size_t> open_by_address_;
  std::list<waiting_entry> waiting_for_head_;
};

}  // namespace ppgate
