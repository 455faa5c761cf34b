// Tests of kin::file: opening regular files (and refusing everything else), reading, writing,
// seeking, the shared offset of duplicates, release and close.
#include "catch.hpp"

#include <kin/fd.hpp>
#include <kin/file.hpp>
#include <kin/loop.hpp>

#include "helpers/handles.hpp"
#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"
#include "posix/sys.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using namespace std::chrono_literals;
using kin_test::bytes_of;
using kin_test::run_all;

namespace {

bool is_open_fd(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

std::span<std::byte> buffer_of(std::string& s) {
  return std::as_writable_bytes(std::span(s.data(), s.size()));
}

// Reads up to `n` bytes at the current offset.
std::string read_some(kin::file& f, std::size_t n) {
  std::string buf(n, '\0');
  auto got = f.read(buffer_of(buf));
  REQUIRE(got);
  buf.resize(*got);
  return buf;
}

}  // namespace

TEST_CASE("a file opened with O_CREAT|O_RDWR writes, reads, seeks and knows its size", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  const auto path = (dir.path() / "data").string();
  kin::file f(l);
  REQUIRE(f.open(path, O_CREAT | O_RDWR, 0600));
  CHECK(f.is_open());
  CHECK((::fcntl(f.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((::fcntl(f.fd(), F_GETFL) & O_NONBLOCK) == 0);  // only used to open, then cleared
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(*f.size() == 0);

  REQUIRE(f.write(bytes_of("hello, file")));
  CHECK(*f.size() == 11);
  CHECK(*f.seek(0, SEEK_CUR) == 11);
  CHECK(read_some(f, 16).empty());  // at the end
  REQUIRE(*f.seek(0) == 0);
  CHECK(read_some(f, 5) == "hello");
  CHECK(read_some(f, 100) == ", file");
  CHECK(*f.seek(-4, SEEK_END) == 7);
  CHECK(read_some(f, 100) == "file");

  // read_at and write_at leave the offset alone.
  REQUIRE(*f.seek(2) == 2);
  std::string four(4, '\0');
  auto n = f.read_at(buffer_of(four), 7);
  REQUIRE(n);
  CHECK(*n == 4);
  CHECK(four == "file");
  REQUIRE(f.write_at(bytes_of("FILE"), 7));
  REQUIRE(f.write_at(bytes_of("!"), 11));  // appends
  CHECK(*f.seek(0, SEEK_CUR) == 2);
  CHECK(read_some(f, 100) == "llo, FILE!");
  CHECK(*f.size() == 12);
  std::string past(4, 'x');
  auto none = f.read_at(buffer_of(past), 100);
  REQUIRE(none);
  CHECK(*none == 0);

  // A large write goes out whole.
  std::string big(1 << 20, 'z');
  REQUIRE(f.seek(0));
  REQUIRE(f.write(bytes_of(big)));
  CHECK(*f.size() == big.size());
  REQUIRE(f.sync());

  // Offsets beyond off_t are refused before any system call.
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  auto far_read = f.read_at(buffer_of(past), huge);
  REQUIRE_FALSE(far_read);
  CHECK(far_read.error() == std::errc::invalid_argument);
  auto far_write = f.write_at(bytes_of("x"), huge);
  REQUIRE_FALSE(far_write);
  CHECK(far_write.error() == std::errc::invalid_argument);
  CHECK(*f.size() == big.size());

  auto bad_seek = f.seek(-1, SEEK_SET);
  REQUIRE_FALSE(bad_seek);
  CHECK(bad_seek.error() == std::errc::invalid_argument);
  auto bad_whence = f.seek(0, 12345);
  REQUIRE_FALSE(bad_whence);
  CHECK(bad_whence.error() == std::errc::invalid_argument);
  CHECK_FALSE(l.is_alive());  // a file never keeps the loop running
}

TEST_CASE("a file opened read-only refuses writes with EBADF", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  const auto path = (dir.path() / "ro").string();
  {
    kin::file w(l);
    REQUIRE(w.open(path, O_CREAT | O_WRONLY | O_TRUNC));
    REQUIRE(w.write(bytes_of("content")));
  }
  kin::file f(l);
  REQUIRE(f.open(path, O_RDONLY));
  auto w = f.write(bytes_of("x"));
  REQUIRE_FALSE(w);
  CHECK(w.error() == std::errc::bad_file_descriptor);
  auto wa = f.write_at(bytes_of("x"), 0);
  REQUIRE_FALSE(wa);
  CHECK(wa.error() == std::errc::bad_file_descriptor);
  CHECK(read_some(f, 100) == "content");
}

TEST_CASE("open refuses what is not a regular file, without blocking or keeping a descriptor",
          "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  const auto before = kin_test::open_fds();
  kin::file f(l);
  std::string path;
  int flags = O_RDONLY;
  std::errc expected{};

  SECTION("a directory, read-only: EISDIR") {
    path = dir.path().string();
    expected = std::errc::is_a_directory;
  }
  SECTION("a directory, read-write: EISDIR") {
    path = dir.path().string();
    flags = O_RDWR;
    expected = std::errc::is_a_directory;
  }
  SECTION("/dev/null: EINVAL") {
    path = "/dev/null";
    flags = O_RDWR;
    expected = std::errc::invalid_argument;
  }
  SECTION("a Unix socket file: EINVAL") {
    path = (dir.path() / "socket").string();
    auto s = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(s);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    REQUIRE(::bind(s->get(), reinterpret_cast<const sockaddr*>(&un), sizeof un) == 0);
    flags = O_RDWR;
    expected = std::errc::invalid_argument;
  }
  SECTION("a missing file without O_CREAT: ENOENT") {
    path = (dir.path() / "missing").string();
    expected = std::errc::no_such_file_or_directory;
  }
  SECTION("a FIFO with no other end: EINVAL, without waiting for one") {
    path = (dir.path() / "fifo").string();
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    // A blocking open(2) would wait for a writer (or reader) forever; try every direction.
    flags = GENERATE(O_RDONLY, O_WRONLY, O_RDWR, O_RDWR | O_CREAT);
    expected = std::errc::invalid_argument;
  }
  INFO("open(" << path << ", " << flags << ")");
  // If open() blocks, a watchdog opens the other end after a while so the test ends, and fails.
  std::atomic<bool> returned{false};
  bool rescued = false;
  std::thread watchdog([&] {
    if (kin_test::wait_until([&] { return returned.load(); }, 5000ms)) return;
    rescued = true;
    const int other = ::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (other >= 0) {
      kin_test::wait_until([&] { return returned.load(); }, 5000ms);
      ::close(other);
    }
  });
  auto r = f.open(path, flags);
  returned = true;
  watchdog.join();
  CHECK_FALSE(rescued);
  REQUIRE_FALSE(r);
  CHECK(r.error() == expected);
  CHECK_FALSE(f.is_open());
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("open on an open file is EISCONN and keeps the first", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  kin::file f(l);
  REQUIRE(f.open((dir.path() / "a").string(), O_CREAT | O_RDWR));
  const int number = f.fd();
  const auto before = kin_test::open_fds();
  auto by_path = f.open((dir.path() / "b").string(), O_CREAT | O_RDWR);
  REQUIRE_FALSE(by_path);
  CHECK(by_path.error() == std::errc::already_connected);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "b"));  // not even created
  auto other = kin::sys::open((dir.path() / "a").c_str(), O_RDONLY);
  REQUIRE(other);
  auto by_fd = f.open(std::move(*other));
  REQUIRE_FALSE(by_fd);
  CHECK(by_fd.error() == std::errc::already_connected);
  CHECK(f.fd() == number);
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("open takes a regular file's descriptor and refuses a pipe, closing it", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  const auto before = kin_test::open_fds();
  kin::file f(l);
  auto p = kin::make_pipe();
  REQUIRE(p);
  const int number = p->read.get();
  auto r = f.open(std::move(p->read));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  CHECK_FALSE(is_open_fd(number));
  auto sp = kin::make_socketpair();
  REQUIRE(sp);
  auto s = f.open(std::move(sp->first));
  REQUIRE_FALSE(s);
  CHECK(s.error() == std::errc::invalid_argument);
  auto none = f.open(kin::unique_fd());
  REQUIRE_FALSE(none);
  CHECK(none.error() == std::errc::bad_file_descriptor);
  p->write.reset();
  sp->second.reset();
  CHECK_FALSE(f.is_open());
  CHECK(kin_test::open_fds() == before);

  auto raw = kin::sys::open((dir.path() / "f").c_str(), O_CREAT | O_RDWR, 0600);
  REQUIRE(raw);
  REQUIRE(::write(raw->get(), "raw bytes", 9) == 9);
  const int file_number = raw->get();
  REQUIRE(f.open(std::move(*raw)));
  CHECK(f.fd() == file_number);
  CHECK(*f.size() == 9);
  CHECK(*f.seek(0, SEEK_CUR) == 9);  // the descriptor's offset came with it
}

TEST_CASE("release hands the descriptor back; EBADF when closed", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  kin::file f(l);
  REQUIRE(f.open((dir.path() / "r").string(), O_CREAT | O_RDWR));
  REQUIRE(f.write(bytes_of("abc")));
  const int number = f.fd();
  auto fd = f.release();
  REQUIRE(fd);
  CHECK(fd->get() == number);
  CHECK_FALSE(f.is_open());
  CHECK(::lseek(fd->get(), 0, SEEK_CUR) == 3);  // the same open file, offset and all
  auto again = f.release();
  REQUIRE_FALSE(again);
  CHECK(again.error() == std::errc::bad_file_descriptor);
  // Operations on a file that is not open fail with EBADF.
  std::string buf(4, '\0');
  CHECK(f.read(buffer_of(buf)).error() == std::errc::bad_file_descriptor);
  CHECK(f.read_at(buffer_of(buf), 0).error() == std::errc::bad_file_descriptor);
  CHECK(f.write(bytes_of("x")).error() == std::errc::bad_file_descriptor);
  CHECK(f.write_at(bytes_of("x"), 0).error() == std::errc::bad_file_descriptor);
  CHECK(f.seek(0).error() == std::errc::bad_file_descriptor);
  CHECK(f.size().error() == std::errc::bad_file_descriptor);
  CHECK(f.sync().error() == std::errc::bad_file_descriptor);
  // The file can be opened again.
  REQUIRE(f.open(std::move(*fd)));
  CHECK(*f.size() == 3);
}

TEST_CASE("close closes the descriptor at once and runs its callback on a later iteration",
          "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  kin::file f(l);
  REQUIRE(f.open((dir.path() / "c").string(), O_CREAT | O_RDWR));
  const int number = f.fd();
  bool closed = false;
  f.close([&] { closed = true; });
  CHECK_FALSE(f.is_open());
  CHECK_FALSE(is_open_fd(number));
  CHECK_FALSE(closed);
  CHECK(run_all(l));
  CHECK(closed);
  bool again = false;
  f.close([&] { again = true; });  // closing a closed file only schedules the callback
  CHECK(run_all(l));
  CHECK(again);
}

TEST_CASE("two files on duplicated descriptors share one offset", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  kin::file a(l), b(l);
  REQUIRE(a.open((dir.path() / "shared").string(), O_CREAT | O_RDWR));
  auto dup = kin::sys::dup_cloexec(a.fd());
  REQUIRE(dup);
  REQUIRE(b.open(std::move(*dup)));
  CHECK(a.fd() != b.fd());
  REQUIRE(a.write(bytes_of("first;")));
  REQUIRE(b.write(bytes_of("second;")));  // continues where a stopped
  CHECK(*a.seek(0, SEEK_CUR) == 13);
  REQUIRE(*a.seek(0) == 0);
  CHECK(read_some(b, 6) == "first;");
  CHECK(read_some(a, 100) == "second;");
  CHECK(*b.seek(0, SEEK_CUR) == 13);
}

TEST_CASE("a file never keeps the loop running, referenced or not", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  kin::file f(l);
  REQUIRE(f.open((dir.path() / "idle").string(), O_CREAT | O_RDWR));
  CHECK_FALSE(f.is_active());
  CHECK_FALSE(l.is_alive());
  CHECK(run_all(l));
  f.unref();
  CHECK_FALSE(l.is_alive());
  f.ref();
  CHECK_FALSE(l.is_alive());
  CHECK(run_all(l));
}

TEST_CASE("open at the descriptor limit fails with EMFILE and creates nothing", "[file]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-file");
  const auto before = kin_test::open_fds();
  kin::file f(l);
  kin::result<void> r = kin::fail(std::error_code());
  {
    kin_test::fd_limit none(0);
    r = f.open((dir.path() / "new").string(), O_CREAT | O_RDWR);
  }
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::too_many_files_open);
  CHECK_FALSE(f.is_open());
  CHECK_FALSE(std::filesystem::exists(dir.path() / "new"));
  CHECK(kin_test::open_fds() == before);
}
