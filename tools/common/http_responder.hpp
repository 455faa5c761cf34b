// The tools' minimal HTTP/1.1 responder: for each connection it reads the request up to the end
// of its headers, answers with a fixed response, half-closes, and closes once the client closed
// its end too. Reading on after the answer until the client's end of file (or the linger time)
// keeps the kernel from answering unread request bytes with a reset that could destroy the
// response on its way. The request is not parsed: the end of the headers is all that counts, a
// bare "\n\n" too, for requests typed by hand into nc.
//
// `Extra` is kept with each connection and destroyed when it closes (kin-cluster-hello keeps
// its cluster_ticket there).
#pragma once

#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/socket.hpp>
#include <kin/stream.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>

namespace kin_tools {

inline std::string http_response(std::string_view status, std::string_view body) {
  return fmt::format(
      "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: "
      "close\r\n\r\n{}",
      status, body.size(), body);
}

struct http_limits {
  /// A request's headers must arrive within this time and size.
  std::chrono::milliseconds request_timeout{3000};
  std::size_t request_limit = 16 * 1024;
  /// After the answer, the client gets this long to close its end.
  std::chrono::milliseconds linger_timeout{1000};
  /// After stop(), a connection that has sent nothing gets this long to send its request (it
  /// may be on its way) before it is closed.
  std::chrono::milliseconds stop_linger{2000};
};

/// The stream inside a received handle: a TCP or Unix stream socket; nullptr for anything else.
inline kin::stream* stream_of(kin::any_handle& h) {
  if (auto* t = std::get_if<std::unique_ptr<kin::tcp_socket>>(&h)) return t->get();
  if (auto* u = std::get_if<std::unique_ptr<kin::unix_socket>>(&h)) return u->get();
  return nullptr;
}

template <class Extra = std::monostate>
class http_responder {
 public:
  http_responder(kin::loop& l, std::string body, http_limits limits = {})
      : loop_(l), answer_(http_response("200 OK", body)), limits_(limits) {}
  http_responder(const http_responder&) = delete;
  http_responder& operator=(const http_responder&) = delete;

  /// Takes a connection (a TCP or Unix stream socket; anything else is closed at once).
  void take(kin::any_handle handle, Extra extra = {}) {
    kin::stream* s = stream_of(handle);
    if (s == nullptr) return;
    const std::uint64_t id = next_id_++;
    auto owned = std::make_unique<connection>(loop_, std::move(handle), s, std::move(extra));
    connection& c = *owned;
    connections_.emplace(id, std::move(owned));
    c.timer.set_callback([this, id] { timed_out(id); });
    (void)c.timer.start(stopping_ ? std::min(limits_.request_timeout, limits_.stop_linger)
                                  : limits_.request_timeout);
    auto reading =
        c.socket->read_start([this, id](std::error_code ec, std::span<const std::byte> data,
                                        std::span<kin::unique_fd>) { received(id, ec, data); });
    if (!reading) connections_.erase(id);
  }

  /// Connections that have sent nothing yet get stop_linger to send their request (a client
  /// that connected just before the stop may not have sent it yet) and are closed if they do
  /// not; the others are answered as usual.
  void stop() {
    stopping_ = true;
    for (auto& [id, c] : connections_) {
      if (!c->answered && c->request.empty() && c->timer.due_in() > limits_.stop_linger) {
        (void)c->timer.start(limits_.stop_linger);
      }
    }
  }

  [[nodiscard]] std::size_t size() const noexcept { return connections_.size(); }

 private:
  struct connection {
    connection(kin::loop& l, kin::any_handle h, kin::stream* s, Extra e)
        : extra(std::move(e)), handle(std::move(h)), socket(s), timer(l) {}
    Extra extra;  // destroyed after the socket is closed
    kin::any_handle handle;
    kin::stream* socket;
    kin::timer timer;
    std::string request;
    bool answered = false;
    bool sent = false;       // the answer is written and the write side shut down
    bool peer_done = false;  // the client's end of file came
  };

  connection* find(std::uint64_t id) {
    auto it = connections_.find(id);
    return it == connections_.end() ? nullptr : it->second.get();
  }

  void received(std::uint64_t id, std::error_code ec, std::span<const std::byte> data) {
    connection* c = find(id);
    if (c == nullptr) return;
    if (ec) {
      // A client that closes before its headers are complete gets nothing; an error (a reset)
      // ends the connection whatever its state.
      if (ec == kin::errc::eof && c->answered) {
        c->peer_done = true;
        if (c->sent) connections_.erase(id);
      } else {
        connections_.erase(id);
      }
      return;
    }
    if (c->answered) return;  // the rest of the request: read and dropped
    // The buffer grows by one read at most past request_limit.
    const std::size_t from = c->request.size() < 3 ? 0 : c->request.size() - 3;
    c->request.append(reinterpret_cast<const char*>(data.data()), data.size());
    const std::string_view seen(c->request);
    if (seen.find("\r\n\r\n", from) != std::string_view::npos ||
        seen.find("\n\n", from) != std::string_view::npos) {
      answer(id, *c, answer_);
    } else if (seen.size() > limits_.request_limit) {
      answer(id, *c, http_response("431 Request Header Fields Too Large", "Too large.\n"));
    }
  }

  void answer(std::uint64_t id, connection& c, std::string_view response) {
    c.answered = true;
    std::string().swap(c.request);
    c.socket->write(response);
    c.socket->shutdown([this, id](std::error_code ec) { shut_down(id, ec); });
    (void)c.timer.start(limits_.linger_timeout);
  }

  void shut_down(std::uint64_t id, std::error_code ec) {
    connection* c = find(id);
    if (c == nullptr) return;
    c->sent = true;
    if (ec || c->peer_done) connections_.erase(id);
  }

  void timed_out(std::uint64_t id) {
    connection* c = find(id);
    if (c == nullptr) return;
    if (!c->answered && !c->request.empty()) {
      answer(id, *c, http_response("408 Request Timeout", "Timed out.\n"));
    } else {
      connections_.erase(id);
    }
  }

  kin::loop& loop_;
  const std::string answer_;
  const http_limits limits_;
  std::map<std::uint64_t, std::unique_ptr<connection>> connections_;
  std::uint64_t next_id_ = 0;
  bool stopping_ = false;
};

}  // namespace kin_tools
