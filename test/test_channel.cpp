// Tests of the channel module: the native codec's frame decoder (frames cut at every point, with
// descriptors arriving with their frame's first byte or earlier when frames shared a sendmsg)
// and kin::channel over a socketpair (messages and descriptors in order and exactly once, the
// write queue's water marks, disconnect, and every bad input from a raw peer — too long, too
// many descriptors, descriptors missing, cut off at the end — reported with every descriptor
// closed).
#include "catch.hpp"

#include <kin/channel.hpp>
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/this_process.hpp>

#include "channel/native_frame.hpp"
#include "helpers/handles.hpp"
#include "helpers/leak_guard.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

using kin::detail::native_decoder;
using kin::detail::native_frame;
using kin_test::leak_guard;

using kin_test::child_path;

namespace {

// A descriptor that can be told apart from every other: the read end of a fresh pipe,
// identified by its inode.
kin::unique_fd marked_fd() {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  ::close(p[1]);
  return kin::unique_fd(p[0]);
}

ino_t inode_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_ino;
}

struct sent_frame {
  std::string payload;
  std::vector<ino_t> inodes;
};

std::vector<std::byte> frame_bytes(const std::string& payload, std::size_t fd_count) {
  std::byte header[native_frame::header_size];
  kin::detail::encode_native_header(static_cast<std::uint32_t>(payload.size()),
                                    static_cast<std::uint16_t>(fd_count), header);
  std::vector<std::byte> out(std::begin(header), std::end(header));
  for (char c : payload) out.push_back(static_cast<std::byte>(c));
  return out;
}

// Feeds `bytes` in one chunk with `fds`.
kin::result<void> feed(native_decoder& d, const std::vector<std::byte>& bytes,
                       std::vector<kin::unique_fd> fds = {}) {
  return d.feed(bytes, fds);
}

}  // namespace

TEST_CASE("the native decoder rebuilds frames cut anywhere, each with its own descriptors",
          "[channel]") {
  leak_guard leaks;
  std::mt19937 rng(20261123);
  for (int round = 0; round < 200; ++round) {
    // A batch of frames as one sendmsg would carry them: all their descriptors ride on the
    // batch's first byte.
    std::vector<sent_frame> sent;
    std::vector<std::byte> stream;
    std::vector<kin::unique_fd> batch_fds;
    const int frames = 1 + static_cast<int>(rng() % 6);
    for (int f = 0; f < frames; ++f) {
      sent_frame s;
      const std::size_t size = rng() % 4 == 0 ? 0 : rng() % 3000;
      for (std::size_t i = 0; i < size; ++i) s.payload += static_cast<char>(rng());
      const std::size_t nfds = rng() % 3 == 0 ? rng() % 17 : 0;
      for (std::size_t i = 0; i < nfds; ++i) {
        batch_fds.push_back(marked_fd());
        s.inodes.push_back(inode_of(batch_fds.back().get()));
      }
      const auto bytes = frame_bytes(s.payload, nfds);
      stream.insert(stream.end(), bytes.begin(), bytes.end());
      sent.push_back(std::move(s));
    }
    native_decoder d(1 << 20);
    std::vector<native_frame> got;
    std::size_t at = 0;
    bool first = true;
    while (at < stream.size()) {
      const std::size_t len = std::min<std::size_t>(1 + rng() % 700, stream.size() - at);
      std::vector<kin::unique_fd> fds;
      if (first) fds = std::move(batch_fds);
      first = false;
      REQUIRE(d.feed(std::span(stream.data() + at, len), fds));
      at += len;
      while (auto f = d.next()) got.push_back(std::move(*f));
    }
    REQUIRE(d.finish());
    REQUIRE(got.size() == sent.size());
    for (std::size_t i = 0; i < sent.size(); ++i) {
      CHECK(got[i].payload == sent[i].payload);
      REQUIRE(got[i].fds.size() == sent[i].inodes.size());
      for (std::size_t k = 0; k < sent[i].inodes.size(); ++k) {
        CHECK(inode_of(got[i].fds[k].get()) == sent[i].inodes[k]);
      }
    }
  }
}

TEST_CASE("the native decoder refuses a frame longer than the maximum, closing its descriptors",
          "[channel]") {
  leak_guard leaks;
  native_decoder d(100);
  std::vector<kin::unique_fd> fds;
  fds.push_back(marked_fd());
  auto r = feed(d, frame_bytes(std::string(101, 'x'), 1), std::move(fds));
  REQUIRE_FALSE(r);
  CHECK(r.error() == kin::errc::frame_too_large);
  CHECK_FALSE(d.next());
  // Spent: later input fails the same way, and its descriptors are closed too.
  std::vector<kin::unique_fd> more;
  more.push_back(marked_fd());
  auto again = feed(d, frame_bytes("ok", 1), std::move(more));
  REQUIRE_FALSE(again);
  CHECK(again.error() == kin::errc::frame_too_large);
}

TEST_CASE("the native decoder takes a frame exactly at the maximum", "[channel]") {
  leak_guard leaks;
  native_decoder d(100);
  REQUIRE(feed(d, frame_bytes(std::string(100, 'y'), 0)));
  auto f = d.next();
  REQUIRE(f);
  CHECK(f->payload == std::string(100, 'y'));
}

TEST_CASE("a frame declaring 3 descriptors with 1 attached is truncated, and the 1 is closed",
          "[channel]") {
  leak_guard leaks;
  native_decoder d(1 << 20);
  std::vector<kin::unique_fd> fds;
  fds.push_back(marked_fd());
  auto r = feed(d, frame_bytes("three", 3), std::move(fds));
  REQUIRE_FALSE(r);
  CHECK(r.error() == kin::errc::message_truncated);
  CHECK_FALSE(d.next());
}

TEST_CASE("frames before a bad one are still delivered", "[channel]") {
  leak_guard leaks;
  native_decoder d(1 << 20);
  auto bytes = frame_bytes("good", 1);
  const auto bad = frame_bytes("bad", 2);
  bytes.insert(bytes.end(), bad.begin(), bad.end());
  std::vector<kin::unique_fd> fds;
  fds.push_back(marked_fd());
  const ino_t ino = inode_of(fds.back().get());
  auto r = feed(d, bytes, std::move(fds));
  REQUIRE_FALSE(r);
  CHECK(r.error() == kin::errc::message_truncated);
  auto f = d.next();
  REQUIRE(f);
  CHECK(f->payload == "good");
  REQUIRE(f->fds.size() == 1);
  CHECK(inode_of(f->fds[0].get()) == ino);
  CHECK_FALSE(d.next());
}

TEST_CASE("a malformed header is an error: too many descriptors, reserved bytes set", "[channel]") {
  leak_guard leaks;
  SECTION("more than 253 descriptors") {
    native_decoder d(1 << 20);
    auto r = feed(d, frame_bytes("x", 254));
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::malformed_message);
  }
  SECTION("a reserved byte") {
    native_decoder d(1 << 20);
    auto bytes = frame_bytes("x", 0);
    bytes[7] = std::byte{1};
    auto r = feed(d, bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::malformed_message);
  }
}

TEST_CASE(
    "the end of the stream in the middle of a frame, or with unclaimed descriptors, is "
    "truncation",
    "[channel]") {
  leak_guard leaks;
  SECTION("in the header") {
    native_decoder d(1 << 20);
    auto bytes = frame_bytes("abc", 0);
    bytes.resize(5);
    REQUIRE(feed(d, bytes));
    CHECK(d.buffered() == 5);
    auto r = d.finish();
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::message_truncated);
  }
  SECTION("in the payload, with the frame's descriptor") {
    native_decoder d(1 << 20);
    auto bytes = frame_bytes("abcdef", 1);
    bytes.resize(native_frame::header_size + 2);
    std::vector<kin::unique_fd> fds;
    fds.push_back(marked_fd());
    REQUIRE(feed(d, bytes, std::move(fds)));
    CHECK_FALSE(d.next());
    auto r = d.finish();
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::message_truncated);
  }
  SECTION("descriptors no frame claims") {
    native_decoder d(1 << 20);
    std::vector<kin::unique_fd> fds;
    fds.push_back(marked_fd());
    REQUIRE(feed(d, frame_bytes("none", 0), std::move(fds)));
    REQUIRE(d.next());
    auto r = d.finish();
    REQUIRE_FALSE(r);
    CHECK(r.error() == kin::errc::message_truncated);
  }
  SECTION("a clean end") {
    native_decoder d(1 << 20);
    REQUIRE(feed(d, frame_bytes("", 0)));
    auto f = d.next();
    REQUIRE(f);
    CHECK(f->payload.empty());
    CHECK(d.finish());
  }
}

// ---- kin::channel over a socketpair ----------------------------------------------------------

namespace {

struct received {
  std::string message;
  std::vector<ino_t> inodes;
};

// The inode of a received handle (each test sends pipe read ends, which arrive as kin::pipe).
ino_t inode_of_handle(const kin::any_handle& h) {
  const auto* p = std::get_if<std::unique_ptr<kin::pipe>>(&h);
  REQUIRE(p != nullptr);
  return inode_of((*p)->fd());
}

// Writes `bytes` with `fds` in SCM_RIGHTS on one sendmsg, as a raw (possibly lying) peer.
void raw_send(int sock, const std::vector<std::byte>& bytes, const std::vector<int>& fds) {
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    REQUIRE(c != nullptr);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  REQUIRE(::sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

// A channel on `l` whose messages, error and disconnect are recorded.
struct recording_channel {
  explicit recording_channel(kin::loop& l, kin::channel_options o = {}) : ch(l, o) {
    ch.on_message([this](std::string m, std::vector<kin::any_handle> handles) {
      received r{std::move(m), {}};
      for (const auto& h : handles) r.inodes.push_back(inode_of_handle(h));
      got.push_back(std::move(r));
    });
    ch.on_error([this](std::error_code ec) { errors.push_back(ec); });
    ch.on_disconnect([this] { ++disconnects; });
  }
  kin::channel ch;
  std::vector<received> got;
  std::vector<std::error_code> errors;
  int disconnects = 0;
};

// Opens `r`'s channel on one end of a new socketpair and returns the other, for a test to write
// raw frames into.
kin::unique_fd open_with_raw_peer(recording_channel& r) {
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  REQUIRE(r.ch.open(std::move(pair->second)));
  return std::move(pair->first);
}

}  // namespace

TEST_CASE("a channel delivers every message and descriptor exactly once, in order", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel sender(l);
  REQUIRE(sender.open(std::move(pair->first)));
  recording_channel receiver(l);
  REQUIRE(receiver.ch.open(std::move(pair->second)));

  std::mt19937 rng(7);
  std::vector<received> sent;
  int send_errors = 0;
  for (int i = 0; i < 1000; ++i) {
    received s;
    const std::size_t size = rng() % 8 == 0 ? 100000 + rng() % 100000 : rng() % 200;
    for (std::size_t k = 0; k < size; ++k) s.message += static_cast<char>('a' + rng() % 26);
    std::vector<kin::unique_fd> fds;
    const std::size_t nfds = rng() % 4 == 0 ? rng() % 17 : 0;
    for (std::size_t k = 0; k < nfds; ++k) {
      fds.push_back(marked_fd());
      s.inodes.push_back(inode_of(fds.back().get()));
    }
    sender.send(s.message, std::move(fds), [&](std::error_code ec) { send_errors += ec ? 1 : 0; });
    sent.push_back(std::move(s));
  }
  sender.disconnect();
  REQUIRE(kin_test::run_all(l, std::chrono::seconds(30)));
  CHECK(send_errors == 0);
  CHECK(receiver.errors.empty());
  CHECK(receiver.disconnects == 1);
  REQUIRE(receiver.got.size() == sent.size());
  for (std::size_t i = 0; i < sent.size(); ++i) {
    CHECK(receiver.got[i].message == sent[i].message);
    CHECK(receiver.got[i].inodes == sent[i].inodes);
  }
}

TEST_CASE("send_keeping sends duplicates and leaves the caller's descriptors open", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel sender(l);
  REQUIRE(sender.open(std::move(pair->first)));
  recording_channel receiver(l);
  REQUIRE(receiver.ch.open(std::move(pair->second)));
  kin::unique_fd a = marked_fd();
  kin::unique_fd b = marked_fd();
  const int mine[] = {a.get(), b.get()};
  std::error_code outcome{kin::errc::eof};
  sender.send_keeping("kept", mine, [&](std::error_code ec) { outcome = ec; });
  // A descriptor that is not open is refused, and nothing is sent.
  const int closed_fd[] = {marked_fd().get()};  // closed at the end of the full expression
  std::error_code refused;
  sender.send_keeping("never", closed_fd, [&](std::error_code ec) { refused = ec; });
  REQUIRE(kin_test::run_until(l, [&] { return receiver.got.size() == 1 && refused; }));
  CHECK_FALSE(outcome);
  CHECK(refused == std::errc::bad_file_descriptor);
  CHECK(receiver.got[0].message == "kept");
  CHECK(receiver.got[0].inodes == std::vector<ino_t>{inode_of(a.get()), inode_of(b.get())});
  // Still the caller's, still open.
  CHECK(::fcntl(a.get(), F_GETFD) >= 0);
  CHECK(::fcntl(b.get(), F_GETFD) >= 0);
  l.run_nowait();
  CHECK(receiver.got.size() == 1);
}

TEST_CASE("a descriptor that is not open is refused alone, and the channel goes on", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel sender(l);
  REQUIRE(sender.open(std::move(pair->first)));
  recording_channel receiver(l);
  REQUIRE(receiver.ch.open(std::move(pair->second)));
  std::vector<std::error_code> outcomes(3, std::error_code(kin::errc::eof));
  sender.send("ok", {}, [&](std::error_code ec) { outcomes[0] = ec; });
  int closed_number = -1;
  {
    kin::unique_fd gone = marked_fd();
    closed_number = gone.get();
  }
  std::vector<kin::unique_fd> bad;
  bad.emplace_back(closed_number);  // a number, no longer open
  sender.send("bad", std::move(bad), [&](std::error_code ec) { outcomes[1] = ec; });
  sender.send("ok2", {}, [&](std::error_code ec) { outcomes[2] = ec; });
  REQUIRE(kin_test::run_until(l, [&] { return receiver.got.size() == 2; }));
  REQUIRE(kin_test::run_until(l, [&] { return outcomes[1] != kin::errc::eof; }));
  CHECK_FALSE(outcomes[0]);
  CHECK(outcomes[1] == std::errc::bad_file_descriptor);
  CHECK_FALSE(outcomes[2]);
  CHECK(receiver.got[0].message == "ok");
  CHECK(receiver.got[1].message == "ok2");
  CHECK(receiver.errors.empty());
}

TEST_CASE("a message callback that closes and reopens its channel keeps receiving", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto first = kin::make_socketpair();
  REQUIRE(first);
  auto second = kin::make_socketpair();
  REQUIRE(second);
  kin::channel a(l);
  REQUIRE(a.open(std::move(first->first)));
  kin::channel b(l);
  REQUIRE(b.open(std::move(second->first)));
  kin::channel ch(l);
  REQUIRE(ch.open(std::move(first->second)));
  kin::unique_fd next = std::move(second->second);
  std::vector<std::string> got;
  ch.on_message([&](std::string m, std::vector<kin::any_handle>) {
    got.push_back(m);
    if (m == "one") {
      ch.close();
      REQUIRE(ch.open(std::move(next)));
    }
  });
  a.send("one");
  REQUIRE(kin_test::run_until(l, [&] { return got.size() == 1; }));
  b.send("two");
  REQUIRE(kin_test::run_until(l, [&] { return got.size() == 2; }));
  CHECK(got == std::vector<std::string>{"one", "two"});
  a.close();
  b.close();
  ch.close();
  l.run_nowait();
}

TEST_CASE("a channel refuses what it cannot frame", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel_options o;
  o.max_frame = 1000;
  kin::channel ch(l, o);
  REQUIRE(ch.open(std::move(pair->first)));
  std::vector<std::error_code> results;
  auto record = [&](std::error_code ec) { results.push_back(ec); };
  ch.send(std::string(1001, 'x'), {}, record);
  std::vector<kin::unique_fd> many;
  for (int i = 0; i < 254; ++i) many.push_back(marked_fd());
  ch.send("too many", std::move(many), record);
  ch.close();
  kin::channel closed(l);
  closed.send("not open", {}, record);
  REQUIRE(kin_test::run_all(l));
  REQUIRE(results.size() == 3);
  CHECK(results[0] == std::errc::message_size);
  CHECK(results[1] == std::errc::message_size);
  CHECK(results[2] == std::errc::not_connected);
}

TEST_CASE("send returns false above the high-water mark, and on_drain follows", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel_options o;
  o.high_water = 4096;
  kin::channel sender(l, o);
  REQUIRE(sender.open(std::move(pair->first)));
  recording_channel receiver(l);
  REQUIRE(receiver.ch.open(std::move(pair->second)));
  int drains = 0;
  sender.on_drain([&] {
    ++drains;
    sender.disconnect();
  });
  bool below = true;
  for (int i = 0; i < 100 && below; ++i) below = sender.send(std::string(1000, 'q'));
  CHECK_FALSE(below);
  REQUIRE(kin_test::run_all(l));
  CHECK(drains == 1);
  CHECK(receiver.disconnects == 1);
  CHECK_FALSE(receiver.got.empty());
}

TEST_CASE("a peer's bad frames close the channel with an error and every descriptor closed",
          "[channel]") {
  leak_guard leaks;
  kin::loop l;
  kin::channel_options o;
  o.max_frame = 1000;
  recording_channel receiver(l, o);
  kin::unique_fd peer = open_with_raw_peer(receiver);
  auto a = marked_fd();
  auto b = marked_fd();
  std::error_code want;
  SECTION("a declared length over the maximum") {
    raw_send(peer.get(), frame_bytes(std::string(1001, 'x'), 2), {a.get(), b.get()});
    want = kin::errc::frame_too_large;
  }
  SECTION("3 descriptors declared, 1 attached") {
    raw_send(peer.get(), frame_bytes("abc", 3), {a.get()});
    want = kin::errc::message_truncated;
  }
  SECTION("a truncated frame, then the end") {
    auto bytes = frame_bytes("abcdef", 1);
    bytes.resize(bytes.size() - 2);
    raw_send(peer.get(), bytes, {a.get()});
    peer.reset();
    want = kin::errc::message_truncated;
  }
  SECTION("a header that does not parse") {
    auto bytes = frame_bytes("abc", 0);
    bytes[6] = std::byte{0x7f};
    raw_send(peer.get(), bytes, {a.get()});
    want = kin::errc::malformed_message;
  }
  a.reset();
  b.reset();
  REQUIRE(kin_test::run_all(l));
  REQUIRE(receiver.errors.size() == 1);
  CHECK(receiver.errors[0] == want);
  CHECK(receiver.disconnects == 1);
  CHECK_FALSE(receiver.ch.is_open());
  CHECK(receiver.got.empty());
}

TEST_CASE("frames without descriptors cut across reads arrive exactly; a bad one after is an error",
          "[channel]") {
  // Whole frames without descriptors go from the read buffer straight to their message; a
  // frame cut by a read, and one that is invalid, go through the decoder.
  leak_guard leaks;
  kin::loop l;
  kin::channel_options o;
  o.max_frame = 1000;
  recording_channel receiver(l, o);
  kin::unique_fd peer = open_with_raw_peer(receiver);
  std::vector<std::byte> all;
  std::vector<std::string> sent = {"alpha", "", std::string(1000, 'm'), "delta", "epsilon"};
  for (const std::string& m : sent) {
    const auto f = frame_bytes(m, 0);
    all.insert(all.end(), f.begin(), f.end());
  }
  const auto bad = frame_bytes(std::string(1001, 'x'), 0);
  all.insert(all.end(), bad.begin(), bad.end());
  // Cuts: after two whole frames and 3 bytes of a header; inside the 1000-byte payload; after
  // the rest of the frames and 5 bytes of the bad one's header.
  const std::size_t header = native_frame::header_size;
  const std::size_t first = header + 5 + header + 3;
  const std::size_t second = first + (header - 3) + 400;
  const std::size_t third = header * 5 + 5 + 1000 + 5 + 7 + 5;
  std::size_t at = 0;
  for (std::size_t cut : {first, second, third, all.size()}) {
    raw_send(peer.get(),
             std::vector<std::byte>(all.begin() + static_cast<std::ptrdiff_t>(at),
                                    all.begin() + static_cast<std::ptrdiff_t>(cut)),
             {});
    at = cut;
    if (receiver.ch.is_open()) l.run_once();  // the piece is there: one read takes it
  }
  REQUIRE(kin_test::run_all(l));
  REQUIRE(receiver.got.size() == sent.size());
  for (std::size_t i = 0; i < sent.size(); ++i) CHECK(receiver.got[i].message == sent[i]);
  REQUIRE(receiver.errors.size() == 1);
  CHECK(receiver.errors[0] == kin::errc::frame_too_large);
  CHECK(receiver.disconnects == 1);
}

TEST_CASE("a peer that closes between frames is a disconnect without an error", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  recording_channel receiver(l);
  REQUIRE(receiver.ch.open(std::move(pair->second)));
  raw_send(pair->first.get(), frame_bytes("last words", 0), {});
  pair->first.reset();
  REQUIRE(kin_test::run_all(l));
  CHECK(receiver.errors.empty());
  CHECK(receiver.disconnects == 1);
  REQUIRE(receiver.got.size() == 1);
  CHECK(receiver.got[0].message == "last words");
}

TEST_CASE("a channel opens only on a Unix stream socket, and closes anything else", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  kin::channel ch(l);
  auto p = kin::make_pipe();
  REQUIRE(p);
  auto r = ch.open(std::move(p->read));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::not_a_socket);
  auto dgram = kin::make_socketpair(kin::socket_type::datagram);
  REQUIRE(dgram);
  auto d = ch.open(std::move(dgram->first));
  REQUIRE_FALSE(d);
  CHECK(d.error() == std::errc::invalid_argument);
  auto bad = ch.open(kin::unique_fd());
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == std::errc::bad_file_descriptor);
  CHECK_FALSE(ch.is_open());
}

// ---- kin::fork and channel::from_environment --------------------------------------------------

namespace {

// Sets KIN_CHANNEL_FD for the test (from_environment removes it).
struct channel_env {
  explicit channel_env(const std::string& value) {
    REQUIRE(kin::this_process::set_env("KIN_CHANNEL_FD", value));
  }
  channel_env(const channel_env&) = delete;
  channel_env& operator=(const channel_env&) = delete;
  ~channel_env() { (void)kin::this_process::unset_env("KIN_CHANNEL_FD"); }
};

}  // namespace

TEST_CASE(
    "a forked child gets a channel: messages and descriptors come back exactly once, in "
    "order",
    "[channel]") {
  leak_guard leaks;
  REQUIRE_FALSE(child_path().empty());
  kin::loop l;
  kin::fork_options o;
  o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::inherit(), kin::stdio::inherit()};
  auto f = kin::fork(l, child_path(), {"channel-echo"}, o);
  REQUIRE(f);
  recording_channel back(l);
  kin::channel& ch = *f->channel;
  ch.on_message([&](std::string m, std::vector<kin::any_handle> handles) {
    received r{std::move(m), {}};
    for (const auto& h : handles) r.inodes.push_back(inode_of_handle(h));
    back.got.push_back(std::move(r));
    if (back.got.size() == 300) ch.disconnect();
  });
  int status = -1;
  f->child.on_exit([&](std::error_code, int st, int) { status = st; });
  std::mt19937 rng(11);
  std::vector<received> sent;
  for (int i = 0; i < 300; ++i) {
    received s;
    const std::size_t size = rng() % 10 == 0 ? 70000 : rng() % 300;
    for (std::size_t k = 0; k < size; ++k) s.message += static_cast<char>(rng());
    std::vector<kin::unique_fd> fds;
    const std::size_t nfds = rng() % 3 == 0 ? rng() % 17 : 0;
    for (std::size_t k = 0; k < nfds; ++k) {
      fds.push_back(marked_fd());
      s.inodes.push_back(inode_of(fds.back().get()));
    }
    ch.send(s.message, std::move(fds));
    sent.push_back(std::move(s));
  }
  REQUIRE(kin_test::run_all(l, std::chrono::seconds(30)));
  CHECK(status == 0);
  REQUIRE(back.got.size() == sent.size());
  for (std::size_t i = 0; i < sent.size(); ++i) {
    CHECK(back.got[i].message == sent[i].message);
    CHECK(back.got[i].inodes == sent[i].inodes);
  }
}

TEST_CASE("a forked child finds its channel, and the variable is gone from its environment",
          "[channel]") {
  leak_guard leaks;
  REQUIRE_FALSE(child_path().empty());
  kin::loop l;
  for (int fd : {3, 7}) {
    kin::fork_options o;
    o.channel_fd = fd;
    o.spawn.stdio = {kin::stdio::ignore(), kin::stdio::pipe(), kin::stdio::inherit()};
    auto f = kin::fork(l, child_path(), {"channel-env"}, o);
    REQUIRE(f);
    std::string out;
    REQUIRE(f->child.stdout_stream()->read_start(
        [&](std::error_code ec, std::span<const std::byte> data, std::span<kin::unique_fd>) {
          if (!ec) out += kin_test::text_of(data);
        }));
    REQUIRE(kin_test::run_all(l));
    CHECK(out == "ok removed\n");
  }
}

TEST_CASE("from_environment refuses what is not a channel, closing nothing of others'",
          "[channel]") {
  leak_guard leaks;
  kin::loop l;
  SECTION("not set") {
    (void)kin::this_process::unset_env("KIN_CHANNEL_FD");
    auto ch = kin::channel::from_environment(l);
    REQUIRE_FALSE(ch);
    CHECK(ch.error() == kin::errc::no_channel);
  }
  SECTION("not a number") {
    channel_env env("three");
    auto ch = kin::channel::from_environment(l);
    REQUIRE_FALSE(ch);
    CHECK(ch.error() == std::errc::invalid_argument);
    CHECK_FALSE(kin::this_process::get_env("KIN_CHANNEL_FD"));
  }
  SECTION("a closed descriptor") {
    int closed_fd;
    {
      auto p = marked_fd();
      closed_fd = p.get();
    }
    channel_env env(std::to_string(closed_fd));
    auto ch = kin::channel::from_environment(l);
    REQUIRE_FALSE(ch);
    CHECK(ch.error() == std::errc::bad_file_descriptor);
  }
  SECTION("a pipe, left open") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    channel_env env(std::to_string(p->read.get()));
    auto ch = kin::channel::from_environment(l);
    REQUIRE_FALSE(ch);
    CHECK(ch.error() == std::errc::not_a_socket);
    CHECK(::fcntl(p->read.get(), F_GETFD) != -1);
  }
  SECTION("a file, left open") {
    kin::unique_fd file(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    REQUIRE(file.is_open());
    channel_env env(std::to_string(file.get()));
    auto ch = kin::channel::from_environment(l);
    REQUIRE_FALSE(ch);
    CHECK(ch.error() == std::errc::not_a_socket);
    CHECK(::fcntl(file.get(), F_GETFD) != -1);
  }
  SECTION("a datagram socket, left open") {
    auto pair = kin::make_socketpair(kin::socket_type::datagram);
    REQUIRE(pair);
    channel_env env(std::to_string(pair->first.get()));
    auto ch = kin::channel::from_environment(l);
    REQUIRE_FALSE(ch);
    CHECK(ch.error() == std::errc::invalid_argument);
    CHECK(::fcntl(pair->first.get(), F_GETFD) != -1);
  }
  SECTION("a Unix stream socket: the channel, unref'd until a message callback is set") {
    auto pair = kin::make_socketpair();
    REQUIRE(pair);
    channel_env env(std::to_string(pair->first.release()));
    auto ch = kin::channel::from_environment(l);
    REQUIRE(ch);
    CHECK((*ch)->is_open());
    CHECK_FALSE(kin::this_process::get_env("KIN_CHANNEL_FD"));
    CHECK(kin_test::run_all(l, std::chrono::milliseconds(500)));  // returns at once: unref'd
    (*ch)->on_message([](std::string, std::vector<kin::any_handle>) {});
    CHECK_FALSE(kin_test::run_all(l, std::chrono::milliseconds(200)));  // now it holds the loop
  }
}

TEST_CASE("a message callback may destroy its channel or replace itself", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  for (int i = 0; i < 3; ++i)
    raw_send(pair->first.get(), frame_bytes("m" + std::to_string(i), 0), {});
  SECTION("destroy") {
    auto ch = std::make_unique<kin::channel>(l);
    REQUIRE(ch->open(std::move(pair->second)));
    int calls = 0;
    ch->on_message([&](std::string, std::vector<kin::any_handle>) {
      ++calls;
      ch.reset();
    });
    REQUIRE(kin_test::run_all(l));
    CHECK(calls == 1);
  }
  SECTION("replace") {
    kin::channel ch(l);
    REQUIRE(ch.open(std::move(pair->second)));
    std::vector<std::string> got;
    ch.on_message([&](std::string m, std::vector<kin::any_handle>) {
      got.push_back("first:" + m);
      ch.on_message([&](std::string m2, std::vector<kin::any_handle>) {
        got.push_back("second:" + m2);
        if (got.size() == 3) ch.close();
      });
    });
    REQUIRE(kin_test::run_all(l));
    CHECK(got == std::vector<std::string>{"first:m0", "second:m1", "second:m2"});
  }
}

TEST_CASE("a channel closed or destroyed while its disconnect is pending hears nothing more",
          "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  auto ch = std::make_unique<kin::channel>(l);
  REQUIRE(ch->open(std::move(pair->first)));
  int disconnects = 0;
  ch->on_disconnect([&] { ++disconnects; });
  ch->send("queued");
  ch->disconnect();
  ch->close();
  SECTION("closed") { REQUIRE(kin_test::run_all(l)); }
  SECTION("destroyed") {
    ch.reset();
    REQUIRE(kin_test::run_all(l));
  }
  CHECK(disconnects == 0);
}

TEST_CASE("a peer that closes with messages of ours unread is a disconnect, not an error",
          "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  recording_channel ours(l);
  REQUIRE(ours.ch.open(std::move(pair->first)));
  ours.ch.send("never read");
  kin::timer later(l, [&] { pair->second.reset(); });  // once the message is in its queue
  REQUIRE(later.start(std::chrono::milliseconds(20)));
  REQUIRE(kin_test::run_all(l));
  CHECK(ours.errors.empty());
  CHECK(ours.disconnects == 1);
}

TEST_CASE("a message callback that clears itself is not called again", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  for (int i = 0; i < 3; ++i) raw_send(pair->first.get(), frame_bytes("x", 0), {});
  pair->first.reset();
  kin::channel ch(l);
  REQUIRE(ch.open(std::move(pair->second)));
  int calls = 0;
  ch.on_message([&](std::string, std::vector<kin::any_handle>) {
    ++calls;
    ch.on_message(nullptr);
  });
  REQUIRE(kin_test::run_all(l));
  CHECK(calls == 1);
}

TEST_CASE("a channel destroyed by on_error gets no on_disconnect", "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  auto ch = std::make_unique<kin::channel>(l);
  REQUIRE(ch->open(std::move(pair->second)));
  int errors = 0;
  int disconnects = 0;
  ch->on_error([&](std::error_code) {
    ++errors;
    ch.reset();
  });
  ch->on_disconnect([&] { ++disconnects; });
  auto bytes = frame_bytes("x", 0);
  bytes[7] = std::byte{9};
  raw_send(pair->first.get(), bytes, {});
  REQUIRE(kin_test::run_all(l));
  CHECK(errors == 1);
  CHECK(disconnects == 0);
}

TEST_CASE(
    "a header declaring 4 GiB reserves nothing up front; the end of the stream then is "
    "truncation",
    "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto pair = kin::make_socketpair();
  REQUIRE(pair);
  kin::channel_options o;
  o.max_frame = std::size_t{1} << 40;
  recording_channel receiver(l, o);
  REQUIRE(receiver.ch.open(std::move(pair->second)));
  std::byte header[native_frame::header_size];
  kin::detail::encode_native_header(0xFFFFFFFFu, 0, header);
  raw_send(pair->first.get(), std::vector<std::byte>(std::begin(header), std::end(header)), {});
  pair->first.reset();
  REQUIRE(kin_test::run_all(l));
  REQUIRE(receiver.errors.size() == 1);
  CHECK(receiver.errors[0] == kin::errc::message_truncated);
}

TEST_CASE("fork of a program that cannot start, or with a bad channel_fd, leaves nothing behind",
          "[channel]") {
  leak_guard leaks;
  kin::loop l;
  auto missing = kin::fork(l, "/nonexistent/kin-program", {});
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == std::errc::no_such_file_or_directory);
  kin::fork_options o;
  o.channel_fd = 1 << 30;
  auto huge = kin::fork(l, child_path(), {"channel-echo"}, o);
  REQUIRE_FALSE(huge);
  CHECK(huge.error().code == std::errc::invalid_argument);
  o.channel_fd = -1;
  auto negative = kin::fork(l, child_path(), {"channel-echo"}, o);
  REQUIRE_FALSE(negative);
  CHECK(negative.error().code == std::errc::invalid_argument);
}
