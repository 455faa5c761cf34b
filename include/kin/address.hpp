// Socket addresses as values (kin::socket_address): IPv4, IPv6 and Unix-domain, with a text form
// that parses back to the same address; numeric only, since kin does no DNS.
#pragma once

#include <kin/export.hpp>
#include <kin/result.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kin {

/// The kinds of address a socket_address holds.
enum class address_family {
  ipv4,           ///< AF_INET: an IPv4 address and a port
  ipv6,           ///< AF_INET6: an IPv6 address, a port and a scope id (0 for none)
  unix_path,      ///< AF_UNIX bound to a filesystem path
  unix_abstract,  ///< AF_UNIX in Linux's abstract namespace (sun_path starts with a NUL byte)
  unix_unnamed,   ///< AF_UNIX with no name (a socketpair end, an unbound socket)
};

/// One socket address, held as the kernel's own `sockaddr_storage` bytes plus a length.
///
/// A value type: copyable, comparable with `==`, never partially built. Every factory either
/// returns a complete address or an error. The bytes are kept in a canonical form (unused fields
/// zeroed; an IPv6 address keeps address, port and scope id but not the flow label), so two
/// addresses are equal exactly when their family and every field kept match. (No resolution is
/// done: `127.0.0.1` and `::ffff:127.0.0.1`, or a relative and an absolute path, differ.)
///
/// The text form, produced by to_string() and read by parse(), is `1.2.3.4:80`, `[::1]:80`,
/// `[fe80::1%2]:80` (numeric scope id), `unix:/path` (also relative paths), `unix:@name` for
/// an abstract name and `unix:` for an unnamed Unix address. `parse(a.to_string()) == a` holds
/// for every address but two kinds of Unix path: one that begins with `@` is written
/// `unix:./@...` (the same file, a different spelling), and one that fills sun_path with no
/// terminating NUL (which only from_native() can produce, on Linux) is too long for parse().
class KIN_API socket_address {
 public:
  /// The size of the byte storage: sizeof(sockaddr_storage).
  static constexpr std::size_t capacity = 128;

  /// An unnamed Unix address (what a socketpair end reports).
  socket_address() noexcept;

  /// A numeric IPv4 or IPv6 address and a port. `host` is an IPv4 literal (`127.0.0.1`) or an
  /// IPv6 literal, optionally in brackets (`::1`, `[::1]`), optionally with a scope:
  /// `fe80::1%2` (numeric) or `fe80::1%eth0` (an interface that exists now).
  /// No name resolution is done. Errors: EINVAL for anything else (a name such as
  /// `localhost`, an empty host, a bracketed IPv4 address, an unknown interface, a NUL byte).
  static result<socket_address> ip(std::string_view host, std::uint16_t port) noexcept;

  /// Reads the text form: `127.0.0.1:8080`, `[::1]:8080`, `[fe80::1%2]:80`, `unix:/path`,
  /// `unix:relative/path`, `unix:@name` (abstract, Linux) or `unix:` (unnamed). The port is
  /// decimal, 0 to 65535, and required for IP addresses.
  /// Errors: EINVAL for anything else (missing or out-of-range port, an IPv6 address without
  /// brackets, a host name, surrounding spaces); ENAMETOOLONG and EAFNOSUPPORT as unix_path()
  /// and unix_abstract() report them.
  static result<socket_address> parse(std::string_view text) noexcept;

  /// A Unix address for a filesystem path (absolute or relative, stored NUL-terminated).
  /// Errors: ENAMETOOLONG if the path and its NUL do not fit in sun_path (108 bytes on Linux,
  /// 104 on the BSDs and macOS); EINVAL for an empty path or one containing a NUL byte.
  static result<socket_address> unix_path(std::string_view path) noexcept;

  /// A Unix address in Linux's abstract namespace (see unix(7)): `name` is any bytes, NUL
  /// included, and needs no file. Errors: ENAMETOOLONG if the name plus the leading NUL do not
  /// fit in sun_path; EAFNOSUPPORT on systems without abstract names (everything but Linux).
  static result<socket_address> unix_abstract(std::string_view name) noexcept;

  /// Copies an address the kernel returned (getsockname, getpeername, accept, recvfrom): `sa`
  /// points to `len` bytes of a sockaddr. Errors: EINVAL for a null pointer, or a length too
  /// short for the family or longer than `capacity`; EAFNOSUPPORT for a family other than
  /// AF_INET, AF_INET6 and AF_UNIX.
  static result<socket_address> from_native(const void* sa, unsigned len) noexcept;

  /// The address `fd` is bound to (getsockname). Errors: EBADF, ENOTSOCK, ENOBUFS, and those of
  /// from_native() for a socket of another family (EAFNOSUPPORT).
  static result<socket_address> local_of(int fd) noexcept;

  /// The address of the peer `fd` is connected to (getpeername). Errors: EBADF, ENOTSOCK,
  /// ENOTCONN, ENOBUFS, and those of from_native() for another family (EAFNOSUPPORT).
  static result<socket_address> peer_of(int fd) noexcept;

  /// Which kind of address this is.
  [[nodiscard]] address_family family() const noexcept { return family_; }
  /// True for ipv4 and ipv6.
  [[nodiscard]] bool is_ip() const noexcept {
    return family_ == address_family::ipv4 || family_ == address_family::ipv6;
  }
  /// True for the three Unix families.
  [[nodiscard]] bool is_unix() const noexcept { return !is_ip(); }

  /// The port of an IP address (host byte order); 0 for Unix addresses.
  [[nodiscard]] std::uint16_t port() const noexcept;
  /// The IPv6 scope id (interface index), 0 when there is none or the address is not IPv6.
  [[nodiscard]] std::uint32_t scope_id() const noexcept;
  /// The IP address as text (`127.0.0.1`, `::1`, `fe80::1%2`, without brackets); empty for Unix
  /// addresses. Throws only std::bad_alloc.
  [[nodiscard]] std::string host() const;
  /// The filesystem path of a unix_path address, or the name of a unix_abstract one (without
  /// its leading NUL); empty otherwise. Points into this object.
  [[nodiscard]] std::string_view path() const noexcept;
  /// The text form, which parse() reads back (see the class comment). Throws only
  /// std::bad_alloc.
  [[nodiscard]] std::string to_string() const;

  /// The sockaddr bytes, for bind, connect, sendto and the like; valid while this object is.
  [[nodiscard]] const void* data() const noexcept { return storage_; }
  /// The number of meaningful bytes at data(): the socklen_t to pass with it.
  [[nodiscard]] unsigned size() const noexcept { return size_; }

  /// True when both hold the same family and the same canonical bytes.
  [[nodiscard]] bool operator==(const socket_address& other) const noexcept;

 private:
  socket_address(address_family family, const void* native, std::size_t len) noexcept;

  // sockaddr_storage is 128 bytes with the alignment of a long on every supported system
  // (checked in address.cpp).
  alignas(8) std::byte storage_[capacity] = {};
  unsigned size_ = 0;
  address_family family_ = address_family::unix_unnamed;
};

}  // namespace kin
