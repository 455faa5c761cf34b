// kin::file: a regular file as a handle, so it can be passed between processes and closed with a
// callback like every other handle. Its operations are plain blocking system calls.
#pragma once

#include <kin/export.hpp>
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/result.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include <sys/types.h>
#include <unistd.h>

namespace kin {

/// A regular file. Readiness means nothing for regular files (epoll refuses them; they are
/// always "ready"), so the operations here are the system calls themselves and block the
/// calling thread for as long as the disk takes; keep them short on a loop thread. The
/// descriptor's offset is the open file's, shared with every duplicate — in another process
/// too, after the file was passed there.
///
/// A file has no work in progress, so it never keeps the loop running; ref() and unref()
/// change nothing visible.
class KIN_API file : public handle {
 public:
  explicit file(loop& l) : handle(l) {}
  ~file() = default;

  /// open(2) with O_CLOEXEC added; never waits for the other end of a FIFO. Errors: EISCONN
  /// if already open, EISDIR for a directory and EINVAL for anything else that is not a
  /// regular file (a FIFO, a socket, a device: no descriptor is kept), and those of open(2).
  result<void> open(const std::string& path, int flags, mode_t mode = 0666) noexcept;
  /// Takes ownership of a regular file's descriptor. Errors: EBADF; EINVAL for anything else;
  /// EISCONN if already open.
  result<void> open(unique_fd fd) noexcept;

  /// read(2) at the current offset: the bytes read, 0 at the end of the file.
  result<std::size_t> read(std::span<std::byte> buffer) noexcept;
  /// pread(2) at `offset`, which leaves the file offset alone.
  result<std::size_t> read_at(std::span<std::byte> buffer, std::uint64_t offset) noexcept;
  /// Writes all of `data` at the current offset (write(2) again after a short write); on an
  /// error after some bytes, the error (the count of bytes written is lost, as with fwrite).
  result<void> write(std::span<const std::byte> data) noexcept;
  /// Writes all of `data` at `offset` with pwrite(2).
  result<void> write_at(std::span<const std::byte> data, std::uint64_t offset) noexcept;
  /// lseek(2): the new offset. Errors: EINVAL for a bad `whence` or a negative result.
  result<std::uint64_t> seek(std::int64_t offset, int whence = SEEK_SET) noexcept;
  /// The file's size (fstat).
  [[nodiscard]] result<std::uint64_t> size() const noexcept;
  /// fsync(2).
  result<void> sync() noexcept;

  /// Closes the descriptor; `cb` runs on a later iteration.
  void close(std::function<void()> cb = {});
  /// Detaches the descriptor and hands it back. Errors: EBADF if not open.
  result<unique_fd> release() noexcept;

  [[nodiscard]] bool is_open() const noexcept { return fd_.is_open(); }
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

 private:
  unique_fd fd_;
};

}  // namespace kin
