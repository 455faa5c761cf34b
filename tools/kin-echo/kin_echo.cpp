// kin-echo: a child that echoes its channel. Started by kin::fork() or by Node's
// child_process.fork() (either codec), it sends every message back unchanged. A handle that
// comes with a message is used first: a connected socket (or a pipe's write end) gets
// "echo <pid>\n" and is closed; a listening socket accepts one connection, which gets the same
// line, and both are closed; then the message is echoed, without the handle. Messages are
// echoed in the order they came. Node's socket-list queries about a passed socket are
// answered (each socket is closed at once, so none is ever open). It exits 0 when the parent
// disconnects, 1 on a channel error, 2 when there is no channel.
#include <kin/channel.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/this_process.hpp>

#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

namespace {

struct pending_echo {
  std::string message;
  bool ready = true;
};

class echo_child {
 public:
  echo_child(kin::loop& l, kin::channel& ch) : loop_(l), channel_(ch) {
    line_ = "echo " + std::to_string(kin::this_process::pid()) + "\n";
  }

  void on_message(std::string message, std::vector<kin::any_handle> handles) {
    queue_.push_back({std::move(message), true});
    pending_echo* entry = &queue_.back();
    for (auto& h : handles) use(h, entry);
    flush();
  }

  void on_internal(const std::string& message) {
    // {"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key":K} and {"cmd":"NODE_SOCKET_GET_COUNT","key":K}
    // from a Node parent whose server accepted a socket it passed here.
    const auto key = member_text(message, "\"key\":");
    if (message.find("\"NODE_SOCKET_NOTIFY_CLOSE\"") != std::string::npos) {
      channel_.send(R"({"cmd":"NODE_SOCKET_ALL_CLOSED","key":)" + key + "}");
    } else if (message.find("\"NODE_SOCKET_GET_COUNT\"") != std::string::npos) {
      channel_.send(R"({"cmd":"NODE_SOCKET_COUNT","key":)" + key + R"(,"count":0})");
    }
  }

  int failures = 0;

 private:
  // The JSON text after `name` up to the next ',' or '}' (enough for Node's string keys).
  static std::string member_text(const std::string& json, std::string_view name) {
    const auto at = json.find(name);
    if (at == std::string::npos) return "null";
    const auto start = at + name.size();
    auto end = start;
    if (end < json.size() && json[end] == '"') {
      end = json.find('"', end + 1);
      end = end == std::string::npos ? json.size() : end + 1;
    } else {
      end = json.find_first_of(",}", start);
      if (end == std::string::npos) end = json.size();
    }
    return json.substr(start, end - start);
  }

  // Writes the line to a connected stream and closes it once written.
  void answer(std::unique_ptr<kin::stream> s) {
    kin::stream* raw = s.get();
    streams_.push_back(std::move(s));
    raw->write(line_, [this, raw](std::error_code ec) {
      if (ec) {
        std::fprintf(stderr, "kin-echo: writing to a passed socket: %s\n", ec.message().c_str());
        ++failures;
      }
      raw->close([this, raw] { forget(raw); });
    });
  }

  void forget(kin::stream* s) {
    std::erase_if(streams_, [s](const auto& p) { return p.get() == s; });
  }

  template <class Server>
  void accept_one(std::unique_ptr<Server> server, pending_echo* entry) {
    entry->ready = false;
    Server* raw = server.get();
    auto listen = raw->listen(1, [this, raw, entry](std::error_code ec, kin::unique_fd conn) {
      if (ec) {
        std::fprintf(stderr, "kin-echo: accepting: %s\n", ec.message().c_str());
        ++failures;
      } else if (auto h = kin::adopt(loop_, std::move(conn))) {
        use(*h, nullptr);
      }
      raw->close();
      entry->ready = true;
      flush();
    });
    if (!listen) {
      std::fprintf(stderr, "kin-echo: listen: %s\n", listen.error().message().c_str());
      ++failures;
      entry->ready = true;
      return;
    }
    servers_.push_back(std::shared_ptr<void>(std::move(server)));
  }

  void use(kin::any_handle& h, pending_echo* entry) {
    std::visit(
        [&](auto& held) {
          using held_type = std::decay_t<decltype(held)>;
          if constexpr (std::is_same_v<held_type, kin::raw_descriptor>) {
            std::fprintf(stderr, "kin-echo: a %s came with a message; closed\n",
                         std::string(kin::to_string(held.kind)).c_str());
          } else if constexpr (std::is_same_v<held_type, std::unique_ptr<kin::tcp_server>> ||
                               std::is_same_v<held_type, std::unique_ptr<kin::unix_server>>) {
            if (entry != nullptr) accept_one(std::move(held), entry);
          } else if constexpr (std::is_base_of_v<kin::stream, typename held_type::element_type>) {
            answer(std::move(held));
          } else {
            // A UDP socket or a file: nothing to say on it.
          }
        },
        h);
  }

  void flush() {
    while (!queue_.empty() && queue_.front().ready) {
      channel_.send(queue_.front().message, {}, [this](std::error_code ec) {
        if (ec) ++failures;
      });
      queue_.pop_front();
    }
  }

  kin::loop& loop_;
  kin::channel& channel_;
  std::string line_;
  std::deque<pending_echo> queue_;  // deque: entries stay put while others are added
  std::vector<std::unique_ptr<kin::stream>> streams_;
  std::vector<std::shared_ptr<void>> servers_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf(
        "Usage: kin-echo\n\n"
        "Run by kin::fork() (KIN_CHANNEL_FD) or by Node's child_process.fork()\n"
        "(NODE_CHANNEL_FD): echoes every message on its channel back unchanged. A socket\n"
        "that comes with a message gets \"echo <pid>\\n\" and is closed; a listening socket\n"
        "accepts one connection, which gets the same. Exits 0 when the parent disconnects.\n");
    return 0;
  }
  kin::loop l;
  auto ch = kin::channel::from_environment(l);
  if (!ch) {
    std::fprintf(stderr, "kin-echo: no channel: %s\n", ch.error().message().c_str());
    return 2;
  }
  kin::channel& c = **ch;
  echo_child echo(l, c);
  bool error = false;
  c.on_error([&](std::error_code ec) {
    std::fprintf(stderr, "kin-echo: channel error: %s\n", ec.message().c_str());
    error = true;
  });
  c.on_internal_message(
      [&](std::string message, std::vector<kin::any_handle>) { echo.on_internal(message); });
  c.on_message([&](std::string message, std::vector<kin::any_handle> handles) {
    echo.on_message(std::move(message), std::move(handles));
  });
  l.run();  // until the parent disconnects
  return error || echo.failures != 0 ? 1 : 0;
}
