// What the decoder fuzz targets share: the script an input is read as, the descriptors that
// stand in for received ones, and the checks that stop the run when an invariant breaks.
//
// An input is a script, so that the fuzzer explores where the stream is cut and when
// descriptors arrive as freely as the bytes themselves:
//
//   limit   2 bytes, little-endian: the decoder's size limit (0xFFFF means 64 MiB)
//   chunk*  a control byte, then the chunk's length, then that many bytes (fewer at the end):
//             bits 0-5  descriptors arriving with the chunk (63: the next byte adds 0-255)
//             bit 6     the length takes two bytes, little-endian (else one)
//             bit 7     leave what the chunk completes in the decoder until the next chunk
//
// The descriptors are duplicates of one eventfd, made before the decoder sees anything, and
// nothing else opens a descriptor while it runs, so a number that is closed stays closed: one
// poll() (POLLNVAL) tells exactly which of them the decoder has closed.
#pragma once

#include <kin/fd.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>

namespace kin_fuzz {

/// Stops the run (libFuzzer keeps the input) when an invariant does not hold.
#define KIN_FUZZ_CHECK(cond)                                          \
  do {                                                                \
    if (!(cond)) ::kin_fuzz::check_failed(#cond, __FILE__, __LINE__); \
  } while (0)

[[noreturn]] inline void check_failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: invariant broken: %s\n", file, line, what);
  std::abort();
}

/// The size limit the channel uses by default (max_frame), chosen by the limit 0xFFFF.
inline constexpr std::size_t default_limit = std::size_t{64} << 20;
/// At most this many descriptors arrive in one input: enough for the largest frame (253) and a
/// few more, few enough to keep each run fast.
inline constexpr std::size_t max_script_fds = 320;

struct chunk {
  std::span<const std::byte> bytes;
  std::size_t fds = 0;  ///< descriptors that arrive with these bytes
  bool hold = false;    ///< leave decoded messages in the decoder until the next chunk
};

struct script {
  std::size_t limit = 0;
  std::vector<chunk> chunks;
  std::size_t fds = 0;            ///< in all chunks
  std::string stream;             ///< every chunk's bytes, in order
  std::vector<std::size_t> ends;  ///< where each chunk's bytes end in `stream`
};

inline script read_script(const std::uint8_t* data, std::size_t size) {
  script s;
  std::size_t i = 0;
  auto byte = [&]() -> std::size_t { return i < size ? data[i++] : 0; };
  const std::size_t limit = byte() | (byte() << 8);
  s.limit = limit == 0xFFFF ? default_limit : limit;
  while (i < size) {
    const std::size_t control = byte();
    chunk c;
    c.fds = control & 0x3F;
    if (c.fds == 0x3F) c.fds += byte();
    std::size_t length = byte();
    if (control & 0x40) length |= byte() << 8;
    c.hold = (control & 0x80) != 0;
    if (length > size - i) length = size - i;
    c.bytes = std::span(reinterpret_cast<const std::byte*>(data + i), length);
    i += length;
    if (s.fds + c.fds > max_script_fds) c.fds = max_script_fds - s.fds;
    s.fds += c.fds;
    s.stream.append(reinterpret_cast<const char*>(c.bytes.data()), c.bytes.size());
    s.ends.push_back(s.stream.size());
    s.chunks.push_back(c);
  }
  return s;
}

[[noreturn]] inline void fail_setup(const char* what) {
  std::perror(what);
  std::abort();
}

/// The descriptors one input hands the decoder, in arrival order. Each is given away exactly
/// once; the pool never closes one itself, so every close is the decoder's (or the owner's of a
/// decoded message).
class fd_pool {
 public:
  explicit fd_pool(std::size_t count) {
    // Duplicates cost the kernel no new open file: a run with hundreds of descriptors stays fast.
    static const int original = ::eventfd(0, EFD_CLOEXEC);
    if (original < 0) fail_setup("eventfd");
    numbers_.reserve(count);
    for (std::size_t k = 0; k < count; ++k) {
      const int fd = ::fcntl(original, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) fail_setup("fcntl(F_DUPFD_CLOEXEC)");
      numbers_.push_back(fd);
    }
    polls_.resize(count);
  }
  ~fd_pool() {
    for (std::size_t k = given_; k < numbers_.size(); ++k) kin::unique_fd(numbers_[k]).reset();
  }
  fd_pool(const fd_pool&) = delete;
  fd_pool& operator=(const fd_pool&) = delete;

  /// The next `count` descriptors, owned by the caller from here on.
  std::vector<kin::unique_fd> take(std::size_t count) {
    std::vector<kin::unique_fd> out;
    out.reserve(count);
    for (std::size_t k = 0; k < count; ++k) out.emplace_back(numbers_[given_++]);
    return out;
  }

  /// Every descriptor, in arrival order.
  [[nodiscard]] const std::vector<int>& numbers() const noexcept { return numbers_; }
  /// How many have been given away.
  [[nodiscard]] std::size_t given() const noexcept { return given_; }

  /// Which of the descriptors from `from` to `to` (in arrival order, `to` excluded) are open,
  /// found with one system call.
  const std::vector<bool>& open(std::size_t from, std::size_t to) {
    const std::size_t count = to - from;
    for (std::size_t k = 0; k < count; ++k) polls_[k] = {numbers_[from + k], 0, 0};
    // libFuzzer's timer (-timeout) interrupts system calls.
    while (::poll(polls_.data(), count, 0) < 0) {
      if (errno != EINTR) fail_setup("poll");
    }
    open_.assign(count, false);
    for (std::size_t k = 0; k < count; ++k) open_[k] = (polls_[k].revents & POLLNVAL) == 0;
    return open_;
  }
  /// Which descriptors are open, of all of them.
  const std::vector<bool>& open() { return open(0, numbers_.size()); }

 private:
  std::vector<int> numbers_;
  std::vector<pollfd> polls_;
  std::vector<bool> open_;
  std::size_t given_ = 0;
};

}  // namespace kin_fuzz
