// The helper child's cluster behaviours.
//   cluster-worker        a kin::cluster_worker: on each connection it writes "pid <pid>\n",
//                         then holds the connection until the client closes it
//   cluster-die-once DIR  speaks the cluster protocol itself: the first of its kind to be
//                         handed a connection (it creates DIR/died) exits at once without
//                         taking it; the others take each connection and write "pid <pid>\n"
//   cluster-worker-lazy DIR   as cluster-worker, but once DIR/arm exists the first of its kind
//                         to start (it creates DIR/lazy) never calls start(): never ready
//   cluster-worker-needs FILE as cluster-worker, but exits 1 at once unless FILE exists
//   cluster-take-and-exit writes "pid <pid>\n" on the first connection and exits; a process it
//                         forked sends the took for it 100 ms later
//   cluster-listeners     prints what kin::listeners_from_environment() found: "N NAME ADDRESS
//                         ..." and whether LISTEN_FDS is still set, or "error <errno>"
#include <kin/cluster.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/socket.hpp>
#include <kin/this_process.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace kin_test_child {

namespace {

kin::stream* stream_of(kin::any_handle& h) {
  if (auto* t = std::get_if<std::unique_ptr<kin::tcp_socket>>(&h)) return t->get();
  if (auto* u = std::get_if<std::unique_ptr<kin::unix_socket>>(&h)) return u->get();
  return nullptr;
}

int worker(bool lazy = false) {
  kin::loop l;
  auto opened = kin::cluster_worker::from_environment(l);
  if (!opened) return 1;
  struct held {
    kin::any_handle socket;
    kin::cluster_ticket ticket;
  };
  std::map<int, held> connections;
  int next = 0;
  const std::string hello = "pid " + std::to_string(::getpid()) + "\n";
  if (lazy) {
    l.run();  // stays "starting": the channel alone keeps it
    return 0;
  }
  (*opened)->start([&](kin::any_handle socket, std::size_t, kin::cluster_ticket ticket) {
    kin::stream* s = stream_of(socket);
    if (s == nullptr) return;
    const int id = next++;
    s->write(hello);
    (void)s->read_start([&connections, id](std::error_code ec, std::span<const std::byte>,
                                           std::span<kin::unique_fd>) {
      if (ec) connections.erase(id);  // the client closed (or reset) it
    });
    connections.emplace(id, held{std::move(socket), std::move(ticket)});
  });
  (*opened)->on_stop([&] {});
  l.run();
  return 0;
}

int die_once(const std::string& dir) {
  kin::loop l;
  auto opened = kin::channel::from_environment(l);
  if (!opened) return 1;
  kin::channel& ch = **opened;
  const std::string hello = "pid " + std::to_string(::getpid()) + "\n";
  ch.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    if (m.rfind("hello", 0) == 0) {
      ch.send("ready");
      return;
    }
    if (m.rfind("conn ", 0) == 0 && !handles.empty()) {
      const std::string marker = dir + "/died";
      const int fd = ::open(marker.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
      if (fd >= 0) {
        ::close(fd);
        ::_exit(3);  // handed connections and gone before taking them
      }
      // "conn SERIAL INDEX [SERIAL INDEX]...": took all, then each gets the pid.
      std::string took = "took 0";
      std::size_t pos = 5;
      for (std::size_t k = 0; k < handles.size(); ++k) {
        const std::size_t space = m.find(' ', pos);
        took += " " + m.substr(pos, space - pos);
        pos = m.find(' ', space + 1);
        pos = pos == std::string::npos ? m.size() : pos + 1;
      }
      ch.send(took);
      for (kin::any_handle& h : handles) {
        if (kin::stream* s = stream_of(h)) {
          (void)s->try_write(std::as_bytes(std::span(hello.data(), hello.size())));
        }
      }
      return;
    }
    if (m == "stop") ch.disconnect();
  });
  l.run();
  return 0;
}

// Writes its pid on the first connection it is handed and exits at once, leaving the took to a
// process it forked, which still holds the channel and sends it 100 ms later: the master sees
// the exit before the took, and must not give the connection to anyone else meanwhile.
int take_and_exit() {
  const auto channel_fd = kin::this_process::get_env("KIN_CHANNEL_FD");
  if (!channel_fd) return 1;
  const int raw_channel = std::atoi(channel_fd->c_str());
  kin::loop l;
  auto opened = kin::channel::from_environment(l);
  if (!opened) return 1;
  kin::channel& ch = **opened;
  const std::string hello = "pid " + std::to_string(::getpid()) + "\n";
  ch.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    if (m.rfind("hello", 0) == 0) {
      ch.send("ready");
      return;
    }
    if (m.rfind("conn ", 0) != 0 || handles.size() != 1) return;
    const std::string took = "took 1 " + m.substr(5, m.find(' ', 5) - 5);
    kin::stream* s = stream_of(handles.front());
    if (s == nullptr) ::_exit(2);
    (void)s->try_write(std::as_bytes(std::span(hello.data(), hello.size())));
    if (::fork() == 0) {
      ::usleep(100 * 1000);
      // A native frame: the payload's length (32 bits), the descriptor count (16 bits), 0.
      std::string frame(8, '\0');
      for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((took.size() >> (8 * i)) & 0xFF);
      frame += took;
      (void)!::write(raw_channel, frame.data(), frame.size());
      ::_exit(0);
    }
    ::_exit(0);
  });
  l.run();
  return 0;
}

int listeners() {
  auto found = kin::listeners_from_environment();
  if (!found) {
    std::printf("error %d\n", found.error().value());
    return 0;
  }
  std::string out = std::to_string(found->size());
  for (const auto& l : *found) {
    out += " " + l.name + " " + l.address.to_string();
    if ((::fcntl(l.fd.get(), F_GETFD) & FD_CLOEXEC) == 0) out += " not-cloexec";
  }
  out += kin::this_process::get_env("LISTEN_FDS") ? " still-set" : " removed";
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

int cluster_main(std::string_view behaviour, int argc, char** argv) {
  if (behaviour == "cluster-worker") return worker();
  if (behaviour == "cluster-worker-lazy" && argc >= 3) {
    const std::string dir = argv[2];
    bool lazy = false;
    if (::access((dir + "/arm").c_str(), F_OK) == 0) {
      const int fd = ::open((dir + "/lazy").c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
      if (fd >= 0) {
        ::close(fd);
        lazy = true;
      }
    }
    return worker(lazy);
  }
  if (behaviour == "cluster-worker-needs" && argc >= 3) {
    if (::access(argv[2], F_OK) != 0) return 1;
    return worker();
  }
  if (behaviour == "cluster-die-once" && argc >= 3) return die_once(argv[2]);
  if (behaviour == "cluster-listeners") return listeners();
  if (behaviour == "cluster-take-and-exit") return take_and_exit();
  return -1;
}

}  // namespace kin_test_child
