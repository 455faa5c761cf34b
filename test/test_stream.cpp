// Tests of kin::stream over socketpairs and pipes: ordering, batching, descriptors with bytes,
// truncated control messages, water marks, half-close, close, and errors without signals.
#include "catch.hpp"

#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/socket.hpp>
#include <kin/stream.hpp>

#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"
#include "posix/sys.hpp"
#include "stream_gather.hpp"

#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

std::span<const std::byte> bytes_of(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

std::pair<kin::unique_fd, kin::unique_fd> socket_pair() {
  auto sp = kin::make_socketpair();
  REQUIRE(sp);
  return std::move(*sp);
}

// Two streams on the two ends of one Unix-domain socketpair.
struct connected_streams {
  explicit connected_streams(kin::loop& l) : writer(l), reader(l) {
    auto [a, b] = socket_pair();
    REQUIRE(writer.open(std::move(a)));
    REQUIRE(reader.open(std::move(b)));
  }
  kin::stream writer;
  kin::stream reader;
};

// Collects everything a stream reads until EOF or an error.
struct collector {
  std::string data;
  std::vector<kin::unique_fd> fds;
  // The span of `data` read together with each batch of descriptors: the kernel hands them up
  // with the read that includes their write's first byte, which may begin with earlier bytes.
  std::vector<std::pair<std::size_t, std::size_t>> fd_chunks;
  std::vector<std::size_t> fd_chunk_counts;  // how many descriptors came with each of them
  std::error_code end;
  std::vector<std::error_code> errors;

  kin::stream::read_callback callback() {
    return [this](std::error_code ec, std::span<const std::byte> bytes,
                  std::span<kin::unique_fd> got) {
      if (ec == kin::errc::eof || (ec && ec != kin::errc::message_truncated)) {
        end = ec;
        return;
      }
      if (ec) errors.push_back(ec);
      if (!got.empty()) {
        fd_chunks.emplace_back(data.size(), data.size() + bytes.size());
        fd_chunk_counts.push_back(got.size());
      }
      for (auto& fd : got) fds.push_back(std::move(fd));
      data.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    };
  }
};

std::string pattern(std::size_t n, std::size_t seed = 0) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}

}  // namespace

TEST_CASE("bytes written arrive in order and write callbacks complete in order", "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  kin::stream& writer = pair.writer;
  kin::stream& reader = pair.reader;
  collector got;
  REQUIRE(reader.read_start(got.callback()));
  std::string expected;
  std::vector<int> completed;
  // Small writes (copied and batched) mixed with large owned buffers.
  for (int i = 0; i < 2000; ++i) {
    std::string chunk = i % 100 == 0 ? pattern(100'000, static_cast<std::size_t>(i))
                                     : pattern(static_cast<std::size_t>(i % 50 + 1));
    expected += chunk;
    auto done = [&completed, i](std::error_code ec) {
      CHECK(!ec);
      completed.push_back(i);
    };
    if (i % 2 == 0) {
      std::vector<std::byte> owned(chunk.size());
      std::memcpy(owned.data(), chunk.data(), chunk.size());
      writer.write(std::move(owned), done);
    } else {
      writer.write(bytes_of(chunk), done);
    }
  }
  // The first large write went straight to the kernel, which took part of it; the rest waits.
  CHECK(writer.write_queue_size() > 0);
  CHECK(writer.write_queue_size() < expected.size());
  writer.shutdown([&](std::error_code ec) { CHECK(!ec); });
  l.run();
  CHECK(got.end == kin::errc::eof);
  CHECK(got.data == expected);
  REQUIRE(completed.size() == 2000);
  for (int i = 0; i < 2000; ++i) CHECK(completed[static_cast<std::size_t>(i)] == i);
  CHECK(writer.write_queue_size() == 0);
}

TEST_CASE("descriptors travel with the first byte of their write and are closed once sent",
          "[stream]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    auto [a, b] = socket_pair();
    kin::stream writer(l), reader(l);
    REQUIRE(writer.open(std::move(a)));
    REQUIRE(reader.open(std::move(b)));
    REQUIRE(writer.can_pass_fds());
    collector got;
    REQUIRE(reader.read_start(got.callback()));

    auto p = kin::make_pipe();
    REQUIRE(p);
    writer.write(std::string_view("before|"));
    std::vector<kin::unique_fd> fds;
    fds.push_back(std::move(p->write));
    std::string msg = "with-fd|";
    writer.write(bytes_of(msg), std::move(fds), [](std::error_code ec) { CHECK(!ec); });
    writer.write(std::string_view("after"));
    writer.shutdown();
    l.run();
    CHECK(got.data == "before|with-fd|after");
    REQUIRE(got.fds.size() == 1);
    REQUIRE(got.fd_chunks.size() == 1);
    const std::size_t first_byte = std::strlen("before|");
    CHECK(got.fd_chunks[0].first <= first_byte);
    CHECK(first_byte < got.fd_chunks[0].second);
    // The sender's copy is closed; the received one is close-on-exec and works.
    CHECK((::fcntl(got.fds[0].get(), F_GETFD) & FD_CLOEXEC) != 0);
    REQUIRE(::write(got.fds[0].get(), "x", 1) == 1);
    char c = 0;
    REQUIRE(::read(p->read.get(), &c, 1) == 1);
    CHECK(c == 'x');
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("a large write with descriptors that needs many sendmsg calls sends them once",
          "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  kin::stream& writer = pair.writer;
  kin::stream& reader = pair.reader;
  collector got;
  const std::string big = pattern(4 * 1024 * 1024);
  constexpr int writes = 5, per_write = 16;
  for (int w = 0; w < writes; ++w) {
    std::vector<kin::unique_fd> fds;
    for (int i = 0; i < per_write; ++i) {
      auto d = kin::sys::dup_cloexec(0);
      REQUIRE(d);
      fds.push_back(std::move(*d));
    }
    writer.write(bytes_of(big), std::move(fds));
  }
  writer.shutdown();
  // Read slowly: the writer's sendmsg calls are cut short by the full socket buffer.
  kin::timer pace(l);
  bool reading = false;
  pace.set_callback([&] {
    if (reading) {
      reader.read_stop();
    } else {
      REQUIRE(reader.read_start(got.callback()));
    }
    reading = !reading;
    if (got.end) pace.stop();
  });
  REQUIRE(pace.start(0ms, 1ms));
  l.run();
  CHECK(got.end == kin::errc::eof);
  CHECK(got.data.size() == big.size() * writes);
  CHECK(got.fds.size() == static_cast<std::size_t>(writes * per_write));
  CHECK(got.errors.empty());
  REQUIRE(got.fd_chunks.size() == static_cast<std::size_t>(writes));
  for (std::size_t w = 0; w < writes; ++w) {
    const std::size_t first_byte = big.size() * w;  // each write's descriptors ride on it
    CHECK(got.fd_chunks[w].first <= first_byte);
    CHECK(first_byte < got.fd_chunks[w].second);
  }
}

TEST_CASE("descriptors the receiver cannot take arrive as message_truncated, leaking nothing",
          "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  kin::stream& writer = pair.writer;
  kin::stream& reader = pair.reader;
  collector got;
  std::vector<kin::unique_fd> fds;
  for (int i = 0; i < 4; ++i) {
    auto d = kin::sys::dup_cloexec(0);
    REQUIRE(d);
    fds.push_back(std::move(*d));
  }
  writer.write(std::string_view("first"));
  std::string msg = "second";
  writer.write(bytes_of(msg), std::move(fds));
  // Send everything, then receive at RLIMIT_NOFILE: the kernel cannot install the fds.
  while (writer.write_queue_size() != 0) l.run_nowait();
  const auto before = kin_test::open_fds();
  {
    kin_test::fd_limit full(0);
    REQUIRE(reader.read_start(got.callback()));
    l.run_nowait();
    reader.read_stop();
  }
  CHECK(kin_test::open_fds() == before);
  CHECK(got.data == "firstsecond");
  REQUIRE(got.errors.size() == 1);
  CHECK(got.errors[0] == kin::errc::message_truncated);
  CHECK(got.fds.empty());
  // The stream is still usable for later messages with descriptors.
  std::vector<kin::unique_fd> more;
  auto d = kin::sys::dup_cloexec(0);
  REQUIRE(d);
  more.push_back(std::move(*d));
  writer.write(bytes_of("third"), std::move(more));
  writer.shutdown();
  REQUIRE(reader.read_start(got.callback()));
  l.run();
  CHECK(got.data == "firstsecondthird");
  CHECK(got.fds.size() == 1);
}

TEST_CASE("writes that cannot carry descriptors fail with EINVAL and close them", "[stream]") {
  kin::loop l;
  const auto before = kin_test::open_fds();
  auto p = kin::make_pipe();
  REQUIRE(p);
  auto sp = socket_pair();
  kin::stream on_pipe(l), on_socket(l);
  REQUIRE(on_pipe.open(std::move(p->write)));
  REQUIRE(on_socket.open(std::move(sp.first)));
  CHECK_FALSE(on_pipe.can_pass_fds());
  std::vector<std::error_code> results;
  auto record = [&](std::error_code ec) { results.push_back(ec); };
  auto some_fds = [](std::size_t n) {
    std::vector<kin::unique_fd> v;
    for (std::size_t i = 0; i < n; ++i) v.emplace_back(::fcntl(0, F_DUPFD_CLOEXEC, 0));
    return v;
  };
  on_pipe.write(bytes_of("x"), some_fds(1), record);                   // not a Unix socket
  on_socket.write(std::span<const std::byte>(), some_fds(1), record);  // no byte to ride on
  on_socket.write(bytes_of("x"), some_fds(0), record);                 // nothing to carry
  on_socket.write(bytes_of("x"), some_fds(kin::max_fds_per_write + 1), record);  // too many
  CHECK(results.empty());  // never reported from inside write()
  l.run();
  REQUIRE(results.size() == 4);
  for (auto ec : results) CHECK(ec == std::errc::invalid_argument);
  on_pipe.close();
  on_socket.close();
  sp.second.reset();
  p->read.reset();
  l.run();
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("writing to a pipe whose reader is gone reports EPIPE instead of raising SIGPIPE",
          "[stream]") {
  struct sigaction dfl = {}, previous = {};
  dfl.sa_handler = SIG_DFL;
  REQUIRE(::sigaction(SIGPIPE, &dfl, &previous) == 0);  // SIGPIPE would kill the process
  kin::loop l;
  auto p = kin::make_pipe();
  REQUIRE(p);
  kin::stream writer(l);
  REQUIRE(writer.open(std::move(p->write)));
  p->read.reset();
  std::error_code queued, later;
  writer.write(std::string_view("into the void"), [&](std::error_code ec) { queued = ec; });
  l.run();
  CHECK(queued == std::errc::broken_pipe);
  writer.write(std::string_view("again"), [&](std::error_code ec) { later = ec; });
  l.run();
  CHECK(later == std::errc::broken_pipe);
  auto direct = writer.try_write(bytes_of("x"));
  REQUIRE_FALSE(direct);
  CHECK(direct.error() == std::errc::broken_pipe);
  sigset_t pending;
  sigpending(&pending);
  CHECK_FALSE(sigismember(&pending, SIGPIPE));
  REQUIRE(::sigaction(SIGPIPE, &previous, nullptr) == 0);
}

TEST_CASE("writing to a socket whose peer is gone reports an error, not a signal", "[stream]") {
  struct sigaction dfl = {}, previous = {};
  dfl.sa_handler = SIG_DFL;
  REQUIRE(::sigaction(SIGPIPE, &dfl, &previous) == 0);
  kin::loop l;
  auto [a, b] = socket_pair();
  kin::stream writer(l);
  REQUIRE(writer.open(std::move(a)));
  b.reset();
  std::error_code result;
  writer.write(bytes_of(pattern(1 << 20)), [&](std::error_code ec) { result = ec; });
  l.run();
  CHECK((result == std::errc::broken_pipe || result == std::errc::connection_reset));
  REQUIRE(::sigaction(SIGPIPE, &previous, nullptr) == 0);
}

TEST_CASE("the water marks bound the queue of a writer that heeds them", "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  kin::stream& writer = pair.writer;
  kin::stream& reader = pair.reader;
  constexpr std::size_t high = 256 * 1024, low = 64 * 1024, chunk = 16 * 1024;
  constexpr std::size_t total = 64ull * 1024 * 1024;
  writer.set_water_marks(high, low);
  std::size_t written = 0, largest_queue = 0, drains = 0;
  auto pump = [&] {
    while (written < total) {
      std::vector<std::byte> buf(chunk);
      for (std::size_t i = 0; i < chunk; ++i) {
        buf[i] = static_cast<std::byte>((written + i) % 251);
      }
      written += chunk;
      const bool more = writer.write(std::move(buf));
      largest_queue = std::max(largest_queue, writer.write_queue_size());
      if (!more) return;
    }
    writer.shutdown();
  };
  writer.on_drain([&] {
    ++drains;
    CHECK(writer.write_queue_size() <= low);
    pump();
  });
  // The reader checks every byte and reads slowly: it pauses after every 1 MiB.
  std::size_t received = 0, mismatches = 0, since_pause = 0;
  std::error_code end;
  kin::timer resume(l);
  kin::stream::read_callback on_read = [&](std::error_code ec, std::span<const std::byte> data,
                                           std::span<kin::unique_fd>) {
    if (ec) {
      end = ec;
      return;
    }
    for (std::byte v : data) {
      if (v != static_cast<std::byte>(received % 251)) ++mismatches;
      ++received;
    }
    since_pause += data.size();
    if (since_pause >= (1u << 20)) {
      since_pause = 0;
      reader.read_stop();
      REQUIRE(resume.start(1ms));
    }
  };
  resume.set_callback([&] { REQUIRE(reader.read_start(on_read)); });
  REQUIRE(reader.read_start(on_read));
  pump();
  l.run();
  CHECK(end == kin::errc::eof);
  CHECK(received == total);
  CHECK(mismatches == 0);
  CHECK(drains > 0);
  CHECK(largest_queue <= high + chunk);
}

TEST_CASE("shutdown half-closes after the queue drains; later writes fail with EPIPE", "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  kin::stream& writer = pair.writer;
  kin::stream& reader = pair.reader;
  collector got;
  REQUIRE(reader.read_start(got.callback()));
  std::optional<std::error_code> shut;
  writer.write(std::string_view("last words"));
  writer.shutdown([&](std::error_code ec) { shut = ec; });
  std::error_code late;
  writer.write(std::string_view("too late"), [&](std::error_code ec) { late = ec; });
  l.run();
  REQUIRE(shut);
  CHECK(!*shut);
  CHECK(got.data == "last words");
  CHECK(got.end == kin::errc::eof);
  CHECK(late == std::errc::broken_pipe);
  // Half-closed, not closed: the other direction still works.
  collector back;
  REQUIRE(writer.read_start(back.callback()));
  reader.write(std::string_view("reply"));
  reader.shutdown();
  l.run();
  CHECK(back.data == "reply");
}

TEST_CASE("close cancels queued writes before its own callback", "[stream]") {
  kin::loop l;
  auto [a, b] = socket_pair();
  kin::stream writer(l);
  REQUIRE(writer.open(std::move(a)));
  std::vector<std::string> events;
  writer.write(std::string_view("one"), [&](std::error_code ec) {
    events.push_back(ec == std::errc::operation_canceled ? "cancelled" : "sent");
  });
  writer.close([&] { events.push_back("closed"); });
  CHECK_FALSE(writer.is_open());
  l.run();
  CHECK(events == std::vector<std::string>{"cancelled", "closed"});
  char c;
  CHECK(::read(b.get(), &c, 1) == 0);  // nothing was sent, and the peer sees the close
}

TEST_CASE("a stream can be destroyed from its own read callback", "[stream]") {
  kin::loop l;
  auto [a, b] = socket_pair();
  auto reader = std::make_unique<kin::stream>(l);
  REQUIRE(reader->open(std::move(a)));
  int calls = 0;
  REQUIRE(reader->read_start(
      [&](std::error_code, std::span<const std::byte>, std::span<kin::unique_fd>) {
        ++calls;
        reader.reset();
      }));
  REQUIRE(::write(b.get(), "abc", 3) == 3);
  l.run();
  CHECK(calls == 1);
  CHECK(reader == nullptr);
}

TEST_CASE("open accepts stream sockets and pipes and refuses everything else", "[stream]") {
  kin::loop l;
  kin::stream s(l);
  SECTION("a regular file") {
    kin::unique_fd f(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    auto r = s.open(std::move(f));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
  }
  SECTION("a datagram socket") {
    auto dg = kin::make_socketpair(kin::socket_type::datagram);
    REQUIRE(dg);
    auto r = s.open(std::move(dg->first));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
  }
  SECTION("a listening socket") {
    auto sock = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(sock);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;  // autobind to an abstract name
    REQUIRE(::bind(sock->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(sa_family_t)) == 0);
    REQUIRE(::listen(sock->get(), 1) == 0);
    auto r = s.open(std::move(*sock));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
  }
  SECTION("a closed descriptor") {
    auto r = s.open(kin::unique_fd(987654));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::bad_file_descriptor);
  }
  SECTION("a pipe end and then a second open") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    REQUIRE(s.open(std::move(p->read)));
    CHECK((::fcntl(s.fd(), F_GETFL) & O_NONBLOCK) != 0);
    auto again = s.open(std::move(p->write));
    REQUIRE_FALSE(again);
    CHECK(again.error() == std::errc::already_connected);
  }
  CHECK_FALSE(l.is_alive());
}

TEST_CASE("try_write writes at once, and refuses while writes are queued", "[stream]") {
  kin::loop l;
  auto [a, b] = socket_pair();
  kin::stream s(l);
  REQUIRE(s.open(std::move(a)));
  auto n = s.try_write(bytes_of("now"));
  REQUIRE(n);
  CHECK(*n == 3);
  char buf[3];
  REQUIRE(::read(b.get(), buf, 3) == 3);
  s.write(std::string_view("queued"));
  auto refused = s.try_write(bytes_of("x"));
  REQUIRE_FALSE(refused);
  CHECK(refused.error() == std::errc::resource_unavailable_try_again);
  l.run();
}

TEST_CASE("a read callback may stop reading or replace itself while it runs", "[stream]") {
  kin::loop l;
  auto [a, b] = socket_pair();
  kin::stream reader(l);
  REQUIRE(reader.open(std::move(a)));
  std::string first, second;
  std::string big_capture(1000, 'x');  // big enough that the callback lives on the heap
  REQUIRE(reader.read_start([&, big_capture](std::error_code ec, std::span<const std::byte> d,
                                             std::span<kin::unique_fd>) {
    REQUIRE(!ec);
    first.append(reinterpret_cast<const char*>(d.data()), d.size());
    // Replacing the running callback must not destroy it under our feet.
    REQUIRE(reader.read_start(
        [&](std::error_code ec2, std::span<const std::byte> d2, std::span<kin::unique_fd>) {
          if (ec2) return;
          second.append(reinterpret_cast<const char*>(d2.data()), d2.size());
          reader.read_stop();
        }));
    first += big_capture.substr(0, 1);  // touches the captures after the replacement
  }));
  REQUIRE(::write(b.get(), "one", 3) == 3);
  l.run_once();
  REQUIRE(::write(b.get(), "two", 3) == 3);
  l.run();
  CHECK(first == "onex");
  CHECK(second == "two");
  CHECK_FALSE(reader.is_reading());
}

TEST_CASE("a large write the kernel takes at once still completes on a later iteration",
          "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  collector got;
  REQUIRE(pair.reader.read_start(got.callback()));
  const std::string big = pattern(16 * 1024);
  int called = 0;
  pair.writer.write(bytes_of(big), [&](std::error_code ec) {
    CHECK(!ec);
    ++called;
  });
  // Sent already (nothing queued), but its callback has not run inside write().
  CHECK(pair.writer.write_queue_size() == 0);
  CHECK(called == 0);
  CHECK(pair.writer.is_active());
  l.run_nowait();
  CHECK(called == 1);
  pair.writer.shutdown();
  l.run();
  CHECK(got.data == big);
}

namespace {

// The inode of a descriptor, to tell apart the pipes whose ends a test sends.
ino_t inode_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_ino;
}

// Writes with descriptors as a test sends them, and what the reader must see: each write's
// descriptors are duplicates of a pipe made for that write, so its inode tells them apart.
struct fd_writes {
  std::string expected;             // every byte written, in order
  std::vector<std::size_t> starts;  // where each write with descriptors begins in `expected`
  std::vector<std::size_t> counts;  // how many descriptors it carries
  std::vector<ino_t> inodes;        // the inode of its pipe

  void plain(kin::stream& s, std::string_view text) {
    s.write(text);
    expected += text;
  }
  void with_fds(kin::stream& s, const std::string& frame, std::size_t nfds,
                kin::stream::write_callback cb = {}) {
    starts.push_back(expected.size());
    expected += frame;
    auto p = kin::make_pipe();
    REQUIRE(p);
    inodes.push_back(inode_of(p->write.get()));
    std::vector<kin::unique_fd> fds;
    for (std::size_t k = 0; k < nfds; ++k) {
      auto d = kin::sys::dup_cloexec(p->write.get());
      REQUIRE(d);
      fds.push_back(std::move(*d));
    }
    counts.push_back(nfds);
    s.write(bytes_of(frame), std::move(fds), std::move(cb));
  }

  // Checks that descriptors arrived with the reads that held their writes' first bytes: `got`'s
  // batches, in order, are the writes' descriptor sets taken whole and in order, each batch read
  // together with the first byte of every write whose set it carries. Returns how many batches
  // there were.
  std::size_t check_batches(const collector& got) const {
    std::size_t write = 0;
    std::size_t fd_index = 0;
    for (std::size_t b = 0; b < got.fd_chunks.size(); ++b) {
      const auto [first, end] = got.fd_chunks[b];
      std::size_t left = got.fd_chunk_counts[b];
      while (left > 0) {
        REQUIRE(write < starts.size());
        REQUIRE(left >= counts[write]);  // a set is never split across reads
        CHECK(first <= starts[write]);
        CHECK(starts[write] < end);
        for (std::size_t k = 0; k < counts[write]; ++k) {
          CHECK(inode_of(got.fds[fd_index++].get()) == inodes[write]);
        }
        left -= counts[write];
        ++write;
      }
    }
    CHECK(write == starts.size());
    CHECK(fd_index == got.fds.size());
    return got.fd_chunks.size();
  }
};

}  // namespace

TEST_CASE("small queued writes with descriptors share a sendmsg that carries each first byte",
          "[stream]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    connected_streams pair(l);
    collector got;
    REQUIRE(pair.reader.read_start(got.callback()));
    // Small writes, with descriptors or without, wait in one buffer for the flush.
    fd_writes sent;
    sent.plain(pair.writer, "head");
    constexpr int writes = 50;
    int completed = 0;
    for (int i = 0; i < writes; ++i) {
      // 1, 2 or 3 descriptors
      sent.with_fds(pair.writer, "frame-" + std::to_string(1000 + i),
                    static_cast<std::size_t>(i % 3 + 1), [&](std::error_code ec) {
                      CHECK(!ec);
                      ++completed;
                    });
      if (i % 10 == 9) sent.plain(pair.writer, "|");  // small writes without descriptors
    }
    pair.writer.shutdown();
    l.run();
    CHECK(completed == writes);
    CHECK(got.data == sent.expected);
    // 100 descriptors in 541 bytes: on Linux one sendmsg carries every set (each on a sendmsg
    // that carries its write's first byte), and the reader gets them with one read.
    const std::size_t batches = sent.check_batches(got);
#if defined(__linux__)
    CHECK(batches == 1);
#else
    CHECK(batches == static_cast<std::size_t>(writes));
#endif
    got.fds.clear();
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("a shared sendmsg stops at 253 descriptors and at 2 KiB of bytes", "[stream]") {
  const auto fds_before = kin_test::open_fds();
  const std::size_t frame_size = GENERATE(std::size_t{8}, std::size_t{300});
  {
    kin::loop l;
    connected_streams pair(l);
    collector got;
    REQUIRE(pair.reader.read_start(got.callback()));
    fd_writes sent;
    sent.plain(pair.writer, "head");
    constexpr int writes = 40;  // 16 descriptors each: 640 in all
    for (int i = 0; i < writes; ++i) {
      sent.with_fds(pair.writer, pattern(frame_size, static_cast<std::size_t>(i)), 16);
    }
    pair.writer.shutdown();
    l.run();
    CHECK(got.data == sent.expected);
    CHECK(got.errors.empty());  // no MSG_CTRUNC: no read got more than 253
    const std::size_t batches = sent.check_batches(got);
    for (std::size_t n : got.fd_chunk_counts) CHECK(n <= kin::max_fds_per_write);
#if defined(__linux__)
    // 15 sets of 16 fit under 253; 300-byte frames: 7 first bytes fit within 2 KiB.
    const std::size_t per_batch = frame_size == 8 ? 15 : 7;
    CHECK(batches == (writes + per_batch - 1) / per_batch);
#else
    CHECK(batches == static_cast<std::size_t>(writes));
#endif
    got.fds.clear();
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("large writes queued behind one another arrive exactly, whatever their alignment",
          "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  collector got;
  REQUIRE(pair.reader.read_start(got.callback()));
  // A small write first, so that every large write after it is copied into the queue; the
  // copies start at their source's offset modulo 64, after some padding that is never sent.
  std::string expected = "start|";
  pair.writer.write(std::string_view("start|"));
  const std::string source = pattern(9 * 100'000 + 64, 3);
  for (std::size_t i = 0; i < 9; ++i) {
    const std::size_t offset = i * 100'000 + i * 7 % 64;  // assorted alignments
    const std::string_view piece(source.data() + offset, 100'000 - i);
    pair.writer.write(std::as_bytes(std::span(piece.data(), piece.size())));
    expected += piece;
  }
  CHECK(pair.writer.write_queue_size() == expected.size());
  pair.writer.shutdown();
  l.run();
  CHECK(got.end == kin::errc::eof);
  CHECK(got.data.size() == expected.size());
  CHECK(got.data == expected);
}

// ---- gathered writes (a header and a body, as the channel sends its frames) -----------------

TEST_CASE("a gathered write whose header the kernel takes only in part arrives whole, once",
          "[stream]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    auto p = kin::make_pipe();
    REQUIRE(p);
    // Fill the pipe (16 pages) but for 5 bytes of its last page: a non-blocking write whose
    // length is 5 modulo the page size then merges exactly 5 bytes into that page and stops, so
    // the kernel takes 5 of the header's 8 bytes.
    const long page = ::sysconf(_SC_PAGESIZE);
    REQUIRE(::fcntl(p->write.get(), F_GETPIPE_SZ) == 16 * page);
    const std::string prefill = pattern(static_cast<std::size_t>(16 * page - 5), 1);
    REQUIRE(::write(p->write.get(), prefill.data(), prefill.size()) ==
            static_cast<ssize_t>(prefill.size()));
    kin::stream writer(l), reader(l);
    REQUIRE(writer.open(std::move(p->write)));
    REQUIRE(reader.open(std::move(p->read)));
    const std::string head = "HEADER8|";
    const std::string body = pattern(static_cast<std::size_t>(25 * page + 5) - head.size(), 2);
    int done = 0;
    kin::detail::stream_gather::write(writer, bytes_of(head), bytes_of(body), {},
                                      [&](std::error_code ec) {
                                        CHECK(!ec);
                                        ++done;
                                      });
    // Only the 5 bytes went out; the rest of the header and the whole body wait in the queue.
    CHECK(writer.write_queue_size() == head.size() + body.size() - 5);
    // Queued behind it (the kernel took nothing of this one): a second gathered write.
    const std::string body2 = pattern(70'000, 3);
    kin::detail::stream_gather::write(writer, bytes_of(head), bytes_of(body2), {},
                                      [&](std::error_code ec) {
                                        CHECK(!ec);
                                        CHECK(done == 1);
                                        ++done;
                                      });
    CHECK(writer.write_queue_size() == 2 * head.size() + body.size() + body2.size() - 5);
    collector got;
    REQUIRE(reader.read_start(got.callback()));
    writer.shutdown();
    l.run();
    CHECK(done == 2);
    CHECK(got.end == kin::errc::eof);
    const std::string expected = prefill + head + body + head + body2;
    CHECK(got.data.size() == expected.size());
    CHECK(got.data == expected);
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("gathered writes with descriptors carry them on the header's first byte", "[stream]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    connected_streams pair(l);
    collector got;
    std::string expected;
    std::vector<std::size_t> starts;  // where each gathered write with descriptors begins
    std::vector<ino_t> inodes;
    std::vector<kin::unique_fd> read_ends;
    auto gather = [&](std::string_view body, bool with_fd) {
      const std::string head = "<" + std::to_string(body.size()) + ">";
      std::vector<kin::unique_fd> fds;
      if (with_fd) {
        auto p = kin::make_pipe();
        REQUIRE(p);
        inodes.push_back(inode_of(p->read.get()));
        starts.push_back(expected.size());
        fds.push_back(std::move(p->write));
        read_ends.push_back(std::move(p->read));
      }
      kin::detail::stream_gather::write(pair.writer, bytes_of(head),
                                        std::as_bytes(std::span(body.data(), body.size())),
                                        std::move(fds));
      expected += head;
      expected += body;
    };
    // Small ones, coalesced into the queue with plain writes between them; then a large one
    // that goes out at once with its descriptor and is only partly taken (the socket buffer is
    // smaller than 4 MiB), then more small ones behind it.
    for (int i = 0; i < 40; ++i) {
      const std::string body =
          pattern(static_cast<std::size_t>(i * 37 % 300), static_cast<std::size_t>(i));
      gather(body, i % 3 == 0);
      if (i % 5 == 0) {
        pair.writer.write(std::string_view("plain|"));
        expected += "plain|";
      }
    }
    const std::string big = pattern(4 << 20, 9);
    l.run_nowait();  // the small ones leave, so that the large one finds the queue empty
    const std::size_t before_big = pair.writer.write_queue_size();
    REQUIRE(before_big == 0);
    gather(big, true);
    CHECK(pair.writer.write_queue_size() > 0);
    CHECK(pair.writer.write_queue_size() < big.size());
    for (int i = 0; i < 10; ++i) gather(pattern(50, static_cast<std::size_t>(i)), true);
    REQUIRE(pair.reader.read_start(got.callback()));
    pair.writer.shutdown();
    l.run();
    CHECK(got.end == kin::errc::eof);
    CHECK(got.data == expected);
    REQUIRE(got.fds.size() == inodes.size());
    // Each descriptor is its own write's, in order, and came with a read holding the first
    // byte of that write's header (or an earlier read).
    std::size_t k = 0;
    for (std::size_t c = 0; c < got.fd_chunks.size(); ++c) {
      for (std::size_t j = 0; j < got.fd_chunk_counts[c]; ++j, ++k) {
        CHECK(inode_of(got.fds[k].get()) == inodes[k]);
        CHECK(got.fd_chunks[c].first <= starts[k]);
        CHECK(starts[k] < got.fd_chunks[c].second);
      }
    }
    CHECK(k == inodes.size());
  }
  CHECK(kin_test::open_fds() == fds_before);
}

// ---- callbacks that release, reopen or reconnect the stream ----------------------------------

TEST_CASE("a write callback that releases the stream loses none of the other callbacks",
          "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  int a = 0, b = 0;
  kin::unique_fd released;
  pair.writer.write(std::string_view("hello"), [&](std::error_code ec) {
    CHECK(!ec);
    ++a;
    auto r = pair.writer.release();
    REQUIRE(r);
    released = std::move(*r);
  });
  pair.writer.write(std::string_view("world"), [&](std::error_code ec) {
    CHECK(!ec);  // its bytes left with the first write's, in one system call
    ++b;
  });
  l.run();
  CHECK(a == 1);
  CHECK(b == 1);
  CHECK(released.is_open());
}

TEST_CASE("a write callback that reopens the stream loses none of the other callbacks",
          "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  auto [c, d] = socket_pair();
  int a = 0, b = 0;
  pair.writer.write(std::string_view("one"), [&](std::error_code) {
    ++a;
    pair.writer.close();
    REQUIRE(pair.writer.open(std::move(c)));
  });
  pair.writer.write(std::string_view("two"), [&](std::error_code ec) {
    CHECK(!ec);
    ++b;
  });
  l.run();
  CHECK(a == 1);
  CHECK(b == 1);
}

TEST_CASE(
    "a Unix connect that fails at once is reported once, as a failure, even when retried "
    "from its own callback",
    "[stream]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-stream");
  auto to = kin::socket_address::unix_path((dir.path() / "nobody.sock").string());
  REQUIRE(to);
  kin::unix_socket s(l);
  std::vector<std::error_code> outcomes;
  std::vector<std::error_code> writes;
  std::function<void(std::error_code)> on_connect = [&](std::error_code ec) {
    outcomes.push_back(ec);
    if (outcomes.size() < 3) {
      REQUIRE(s.connect(*to, on_connect));
      // Reading watches the socket, whose hang-up must not pass for a connect that succeeded.
      REQUIRE(s.read_start(
          [](std::error_code, std::span<const std::byte>, std::span<kin::unique_fd>) {}));
      s.write(std::string_view("x"), [&](std::error_code wec) { writes.push_back(wec); });
    }
  };
  REQUIRE(s.connect(*to, on_connect));
  l.run();
  REQUIRE(outcomes.size() == 3);
  for (const auto& ec : outcomes) CHECK(ec == std::errc::no_such_file_or_directory);
  REQUIRE(writes.size() == 2);
  for (const auto& ec : writes) CHECK(ec == std::errc::no_such_file_or_directory);
  CHECK_FALSE(s.is_open());
}

TEST_CASE("descriptors lent to a read callback stay valid when the callback releases the stream",
          "[stream]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    connected_streams pair(l);
    auto p = kin::make_pipe();
    REQUIRE(p);
    std::vector<kin::unique_fd> fds;
    fds.push_back(std::move(p->write));
    pair.writer.write(bytes_of("x"), std::move(fds));
    kin::unique_fd kept, stream_fd;
    REQUIRE(pair.reader.read_start(
        [&](std::error_code ec, std::span<const std::byte>, std::span<kin::unique_fd> got) {
          REQUIRE(!ec);
          auto r = pair.reader.release();
          REQUIRE(r);
          stream_fd = std::move(*r);
          REQUIRE(got.size() == 1);
          kept = std::move(got[0]);  // still valid: the stream's state is gone, not the span
        }));
    l.run();
    REQUIRE(kept.is_open());
    REQUIRE(::write(kept.get(), "y", 1) == 1);
    char c = 0;
    REQUIRE(::read(p->read.get(), &c, 1) == 1);
    CHECK(c == 'y');
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("water marks set before open hold across open and close", "[stream]") {
  kin::loop l;
  kin::stream s(l);
  s.set_water_marks(8, 4);
  auto [a, b] = socket_pair();
  REQUIRE(s.open(std::move(a)));
  // Nine queued bytes are above a high mark of 8 (the default would be 64 KiB).
  CHECK(s.write(std::string_view("1234")));
  CHECK_FALSE(s.write(std::string_view("56789")));
  s.close();
  auto [c, d] = socket_pair();
  REQUIRE(s.open(std::move(c)));
  CHECK(s.write(std::string_view("1234")));
  CHECK_FALSE(s.write(std::string_view("56789")));
  s.close();
  l.run();
}

TEST_CASE("a write refused at once completes in order with the writes around it", "[stream]") {
  kin::loop l;
  connected_streams pair(l);
  collector got;
  REQUIRE(pair.reader.read_start(got.callback()));
  std::vector<std::pair<char, std::error_code>> order;
  auto note = [&](char which) {
    return [&, which](std::error_code ec) { order.emplace_back(which, ec); };
  };
  pair.writer.write(std::string_view("a"), note('a'));
  pair.writer.write(bytes_of("b"), std::vector<kin::unique_fd>{}, note('b'));  // no fds: EINVAL
  pair.writer.write(std::string_view("c"), note('c'));
  pair.writer.shutdown(note('s'));
  pair.writer.shutdown(note('t'));                      // a second shutdown: EALREADY
  pair.writer.write(std::string_view("d"), note('d'));  // after shutdown: EPIPE
  l.run();
  REQUIRE(order.size() == 6);
  CHECK(order[0] == std::pair('a', std::error_code()));
  CHECK(order[1].first == 'b');
  CHECK(order[1].second == std::errc::invalid_argument);
  CHECK(order[2] == std::pair('c', std::error_code()));
  CHECK(order[3].first == 't');  // refused at once, queued behind "c" like the writes
  CHECK(order[3].second == std::errc::connection_already_in_progress);
  CHECK(order[4].first == 'd');
  CHECK(order[4].second == std::errc::broken_pipe);
  CHECK(order[5] == std::pair('s', std::error_code()));  // the shutdown ends the stream
  CHECK(got.data == "ac");
}

TEST_CASE("a stream that reuses its queue's buffers sends each byte once", "[stream]") {
  // The queue keeps the buffer of its last request for the next small writes, hands larger
  // ones back, and gives back a ring that a deep queue made large: none of that may resend or
  // lose a byte.
  kin::loop l;
  connected_streams pair(l);
  const int small_buffer = 8192;
  REQUIRE(::setsockopt(pair.writer.fd(), SOL_SOCKET, SO_SNDBUF, &small_buffer,
                       sizeof small_buffer) == 0);
  collector got;
  REQUIRE(pair.reader.read_start(got.callback()));
  std::string expected;
  auto write = [&](const std::string& s, kin::stream::write_callback cb = {}) {
    expected += s;
    pair.writer.write(s, std::move(cb));
  };
  int step = 0;
  // 1. One large write, most of it queued as one request larger than the kept buffer.
  write(pattern(300'000, 1), [&](std::error_code ec) {
    CHECK(!ec);
    ++step;
    // 2. Small writes into a fresh tail, then (on a later iteration) more into the kept one.
    write("after-large|");
    write("second|", [&](std::error_code ec2) {
      CHECK(!ec2);
      ++step;
      write("kept-buffer|");
      // 3. A queue deeper than the ring keeps, of writes large enough to be requests each.
      for (int i = 0; i < 100; ++i) write(pattern(5000, static_cast<std::size_t>(i)));
      write("deep|", [&](std::error_code ec3) {
        CHECK(!ec3);
        ++step;
        // 4. Small writes after the deep queue was given back.
        write("end");
        pair.writer.shutdown();
      });
    });
  });
  l.run();
  CHECK(step == 3);
  CHECK(got.end == kin::errc::eof);
  CHECK(got.data.size() == expected.size());
  CHECK(got.data == expected);
}
