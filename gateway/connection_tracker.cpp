#include "connection_tracker.hpp"

namespace ppgate {

bool connection_tracker::make_room_for(const net::ip::address& newcomer) {
  auto victim = waiting_for_head_.end();
  std::size_t most = 0;
  for (auto it = waiting_for_head_.begin(); it != waiting_for_head_.end(); ++it) {
    const std::size_t held = open_from(it->address);
    if (held > most) {  // strictly more: the oldest of the largest holder
      most = held;
      victim = it;
    }
  }
  if (victim == waiting_for_head_.end()) return false;
  const std::size_t own = open_from(newcomer);
  if (own > 0 && own + 1 > most && victim->address != newcomer) return false;
  *victim->evicted = true;
  boost::system::error_code ignored;
  victim->socket->close(ignored);
  waiting_for_head_.erase(victim);
  return true;
}

connection_tracker::scoped::scoped(std::shared_ptr<connection_tracker> t, const net::ip::address& from)
    : t_(std::move(t)), from_(from) {
  ++t_->open_;
  ++t_->open_by_address_[from_];
  t_->activity_->touch();
}

connection_tracker::scoped::~scoped() {
  --t_->open_;
  if (auto it = t_->open_by_address_.find(from_); it != t_->open_by_address_.end() && --it->second == 0)
    t_->open_by_address_.erase(it);
  t_->activity_->touch();
}

connection_tracker::waiting::waiting(connection_tracker& t, net::ip::tcp::socket& s, const net::ip::address& from)
    : t_(t) {
  it_ = t_.waiting_for_head_.insert(t_.waiting_for_head_.end(), waiting_entry{&s, from, &evicted_});
}

connection_tracker::waiting::~waiting() {
  if (!evicted_) t_.waiting_for_head_.erase(it_);
}

}  // namespace ppgate
