// What the cluster master and worker share: kin's own cluster protocol on a native channel, and
// listener helpers.
//
// The protocol: each message is one line of text (no line break), words separated by spaces.
//   master -> worker
//     hello MODE N BACKLOG NAME...
//                            first message; MODE is shared or round-robin; in shared mode the
//                            frame carries the N listening sockets (N is 0 in round-robin),
//                            which the worker listens on with BACKLOG
//     conn SERIAL INDEX [SERIAL INDEX]...
//                            round-robin: connections, each accepted on listener INDEX, riding
//                            on the frame in the same order
//     stop                   stop taking connections, finish the ones held, then close
//   worker -> master
//     ready                  start() was called and the hello arrived
//     took COUNT SERIAL...   the connections SERIAL... are the worker's; it holds COUNT now
//     refused SERIAL...      the worker is stopping: the master gives them to others
//     count COUNT            the number of live connections changed
// Names are listener names with spaces replaced by '_'.
#pragma once

#include <kin/loop.hpp>
#include <kin/result.hpp>
#include <kin/server.hpp>

#include <charconv>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

namespace kin::detail {

/// A TCP or Unix listening socket (server's destructor is not public: this holds the class).
class listener_socket {
 public:
  explicit listener_socket(std::unique_ptr<tcp_server> s) noexcept : tcp_(std::move(s)) {}
  explicit listener_socket(std::unique_ptr<unix_server> s) noexcept : unix_(std::move(s)) {}
  server* operator->() const noexcept {
    return tcp_ ? static_cast<server*>(tcp_.get()) : static_cast<server*>(unix_.get());
  }

 private:
  std::unique_ptr<tcp_server> tcp_;
  std::unique_ptr<unix_server> unix_;
};

/// A bound (not yet listening) server for `address`.
result<listener_socket> open_listener(loop& l, const socket_address& address);
/// A server for a listening socket received or inherited.
result<listener_socket> adopt_listener(loop& l, unique_fd fd);

/// The words of a protocol line.
inline std::vector<std::string_view> words_of(std::string_view line) {
  std::vector<std::string_view> words;
  while (!line.empty()) {
    const auto space = line.find(' ');
    if (space != 0) words.push_back(line.substr(0, space));
    if (space == std::string_view::npos) break;
    line.remove_prefix(space + 1);
  }
  return words;
}

inline std::optional<std::uint64_t> number_of(std::string_view word) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), value);
  if (ec != std::errc() || end != word.data() + word.size() || word.empty()) return std::nullopt;
  return value;
}

}  // namespace kin::detail
