// kin::file: a regular file's descriptor as a handle, with the blocking calls that use it.
#include <kin/fd_kind.hpp>
#include <kin/file.hpp>

#include "loop_impl.hpp"
#include "posix/sys.hpp"

#include <cerrno>
#include <limits>

#include <sys/stat.h>
#include <unistd.h>

namespace kin {

result<void> file::open(const std::string& path, int flags, mode_t mode) noexcept {
  if (is_open()) return fail(errno_code(EISCONN));
  // O_NONBLOCK keeps open(2) from waiting on a FIFO that has no writer; it is refused below.
  auto fd = sys::open(path.c_str(), flags | O_NONBLOCK, mode);
  if (!fd) {
    // ENXIO is O_NONBLOCK's doing for a FIFO opened for writing with no reader, and open(2)'s
    // answer for a socket file: neither is a regular file, which is what the caller must hear.
    struct stat st {};
    if (fd.error() == std::errc::no_such_device_or_address && ::stat(path.c_str(), &st) == 0 &&
        !S_ISREG(st.st_mode)) {
      return fail(errno_code(EINVAL));
    }
    return fail(fd.error());
  }
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail(sys::last_error());
  if (!S_ISREG(st.st_mode)) return fail(errno_code(S_ISDIR(st.st_mode) ? EISDIR : EINVAL));
  if ((flags & O_NONBLOCK) == 0) {
    if (auto r = sys::set_nonblocking(fd->get(), false); !r) return r;
  }
  fd_ = std::move(*fd);
  return {};
}

result<void> file::open(unique_fd fd) noexcept {
  if (is_open()) return fail(errno_code(EISCONN));
  if (auto r = sys::require_kind(fd.get(), fd_kind::file); !r) return r;
  fd_ = std::move(fd);
  return {};
}

result<std::size_t> file::read(std::span<std::byte> buffer) noexcept {
  return sys::read(fd_.get(), buffer.data(), buffer.size());
}

result<std::size_t> file::read_at(std::span<std::byte> buffer, std::uint64_t offset) noexcept {
  if (offset > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max())) {
    return fail(errno_code(EINVAL));
  }
  const ssize_t n = sys::retry(
      [&] { return ::pread(fd_.get(), buffer.data(), buffer.size(), static_cast<off_t>(offset)); });
  if (n < 0) return fail(sys::last_error());
  return static_cast<std::size_t>(n);
}

result<void> file::write(std::span<const std::byte> data) noexcept {
  while (!data.empty()) {
    auto n = sys::write(fd_.get(), data.data(), data.size());
    if (!n) return fail(n.error());
    data = data.subspan(*n);
  }
  return {};
}

result<void> file::write_at(std::span<const std::byte> data, std::uint64_t offset) noexcept {
  while (!data.empty()) {
    if (offset > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max())) {
      return fail(errno_code(EINVAL));
    }
    const ssize_t n = sys::retry(
        [&] { return ::pwrite(fd_.get(), data.data(), data.size(), static_cast<off_t>(offset)); });
    if (n < 0) return fail(sys::last_error());
    data = data.subspan(static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
  return {};
}

result<std::uint64_t> file::seek(std::int64_t offset, int whence) noexcept {
  const off_t r = ::lseek(fd_.get(), static_cast<off_t>(offset), whence);
  if (r < 0) return fail(sys::last_error());
  return static_cast<std::uint64_t>(r);
}

result<std::uint64_t> file::size() const noexcept {
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) return fail(sys::last_error());
  return static_cast<std::uint64_t>(st.st_size);
}

result<void> file::sync() noexcept {
  if (sys::retry([&] { return ::fsync(fd_.get()); }) != 0) return fail(sys::last_error());
  return {};
}

void file::close(std::function<void()> cb) {
  fd_.reset();
  if (cb) loop_impl().post(std::move(cb));
}

result<unique_fd> file::release() noexcept {
  if (!is_open()) return fail(errno_code(EBADF));
  return std::move(fd_);
}

}  // namespace kin
