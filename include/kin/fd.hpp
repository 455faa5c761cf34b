// File descriptor ownership (unique_fd) and atomic close-on-exec creation of pipes and socketpairs.
#pragma once

#include <kin/export.hpp>
#include <kin/result.hpp>

#include <utility>

namespace kin {

/// Owns one file descriptor and closes it on destruction.
///
/// Move-only. `close` is never retried on EINTR: on Linux the descriptor is released even when
/// close(2) reports EINTR, and retrying could close a number another thread has just reused.
class KIN_API unique_fd {
 public:
  constexpr unique_fd() noexcept = default;
  /// Takes ownership of `fd` (negative means empty).
  constexpr explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  /// The descriptor, or -1 when empty. Ownership stays here.
  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return is_open(); }

  /// Gives up ownership without closing; the object becomes empty.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

  /// Closes the owned descriptor (if any) and takes ownership of `fd`.
  void reset(int fd = -1) noexcept;

  friend void swap(unique_fd& a, unique_fd& b) noexcept { std::swap(a.fd_, b.fd_); }

 private:
  int fd_ = -1;
};

/// Flags for the descriptors the creation helpers make. Close-on-exec is always set.
enum class fd_mode : unsigned {
  blocking = 0,     ///< both ends blocking
  nonblocking = 1,  ///< both ends O_NONBLOCK
};

/// The two ends of a pipe.
struct pipe_ends {
  unique_fd read;
  unique_fd write;
};

/// Creates a pipe whose ends are close-on-exec from birth (pipe2(O_CLOEXEC)).
/// Errors: EMFILE, ENFILE.
KIN_API result<pipe_ends> make_pipe(fd_mode mode = fd_mode::blocking) noexcept;

/// The socket types make_socketpair accepts.
enum class socket_type { stream, seqpacket, datagram };

/// Creates a connected pair of AF_UNIX sockets, close-on-exec from birth (SOCK_CLOEXEC).
/// Errors: EMFILE, ENFILE, EOPNOTSUPP (seqpacket where unsupported).
KIN_API result<std::pair<unique_fd, unique_fd>> make_socketpair(
    socket_type type = socket_type::stream, fd_mode mode = fd_mode::blocking) noexcept;

}  // namespace kin
