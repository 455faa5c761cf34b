// socket_address: building, parsing and printing IPv4, IPv6 and Unix-domain socket addresses
// (numeric only: kin does no DNS).
#include <kin/address.hpp>

#include "posix/sys.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

namespace kin {

namespace detail {

namespace {

static_assert(sizeof(sockaddr_storage) == socket_address::capacity);
static_assert(alignof(sockaddr_storage) <= 8);

#if defined(__linux__)
constexpr bool has_abstract_unix = true;
#else
// Abstract Unix names are a Linux extension (unix(7)); elsewhere a sun_path starting with NUL
// is just an unnamed socket.
constexpr bool has_abstract_unix = false;
#endif

constexpr std::size_t sun_path_offset = offsetof(sockaddr_un, sun_path);
constexpr std::size_t sun_path_size = sizeof(sockaddr_un::sun_path);

std::error_code invalid() noexcept { return errno_code(EINVAL); }

// An IP address parsed from text, before a port is attached.
struct ip_host {
  bool v6 = false;
  in_addr v4_addr{};
  in6_addr v6_addr{};
  std::uint32_t scope = 0;
};

bool all_digits(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A scope is a numeric interface index (RFC 4007, section 11) or the name of an interface
// that exists now.
result<std::uint32_t> parse_scope(std::string_view scope) noexcept {
  if (all_digits(scope)) {
    std::uint32_t index = 0;
    auto [end, ec] = std::from_chars(scope.data(), scope.data() + scope.size(), index);
    if (ec != std::errc() || end != scope.data() + scope.size()) return fail(invalid());
    return index;
  }
  char name[IF_NAMESIZE];
  if (scope.empty() || scope.size() >= sizeof name) return fail(invalid());
  std::memcpy(name, scope.data(), scope.size());
  name[scope.size()] = '\0';
  const unsigned index = ::if_nametoindex(name);
  if (index == 0) return fail(invalid());
  return static_cast<std::uint32_t>(index);
}

result<ip_host> parse_ip_host(std::string_view host) noexcept {
  bool bracketed = false;
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 2 || host.back() != ']') return fail(invalid());
    host = host.substr(1, host.size() - 2);
    bracketed = true;
  }
  // inet_pton reads a C string, so an embedded NUL would silently end the text early.
  if (host.empty() || host.find('\0') != std::string_view::npos) return fail(invalid());
  bool scoped = false;
  std::string_view scope;
  if (auto percent = host.find('%'); percent != std::string_view::npos) {
    scoped = true;
    scope = host.substr(percent + 1);
    host = host.substr(0, percent);
  }
  char text[INET6_ADDRSTRLEN];
  if (host.empty() || host.size() >= sizeof text) return fail(invalid());
  std::memcpy(text, host.data(), host.size());
  text[host.size()] = '\0';

  ip_host out;
  if (!bracketed && !scoped && ::inet_pton(AF_INET, text, &out.v4_addr) == 1) return out;
  if (::inet_pton(AF_INET6, text, &out.v6_addr) != 1) return fail(invalid());
  out.v6 = true;
  if (scoped) {
    auto index = parse_scope(scope);
    if (!index) return fail(index.error());
    out.scope = *index;
  }
  return out;
}

// A decimal port, 0 to 65535: digits only, no sign, no spaces.
result<std::uint16_t> parse_port(std::string_view text) noexcept {
  if (!all_digits(text) || text.size() > 5) return fail(invalid());
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value > 65535) {
    return fail(invalid());
  }
  return static_cast<std::uint16_t>(value);
}

}  // namespace

}  // namespace detail

socket_address::socket_address() noexcept {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::memcpy(storage_, &un, sizeof un);
  size_ = static_cast<unsigned>(detail::sun_path_offset);
  family_ = address_family::unix_unnamed;
}

socket_address::socket_address(address_family family, const void* native, std::size_t len) noexcept
    : size_(static_cast<unsigned>(len)), family_(family) {
  std::memcpy(storage_, native, len);
}

result<socket_address> socket_address::ip(std::string_view host, std::uint16_t port) noexcept {
  auto parsed = detail::parse_ip_host(host);
  if (!parsed) return fail(parsed.error());
  if (!parsed->v6) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    in.sin_addr = parsed->v4_addr;
    return socket_address(address_family::ipv4, &in, sizeof in);
  }
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(port);
  in6.sin6_addr = parsed->v6_addr;
  in6.sin6_scope_id = parsed->scope;
  return socket_address(address_family::ipv6, &in6, sizeof in6);
}

result<socket_address> socket_address::parse(std::string_view text) noexcept {
  constexpr std::string_view unix_prefix = "unix:";
  if (text.substr(0, unix_prefix.size()) == unix_prefix) {
    const std::string_view rest = text.substr(unix_prefix.size());
    if (rest.empty()) return socket_address();
    if (rest.front() == '@') return unix_abstract(rest.substr(1));
    return unix_path(rest);
  }
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return fail(detail::invalid());
    }
    host = text.substr(0, close + 1);
    port = text.substr(close + 2);
  } else {
    // Without brackets the host must be IPv4: an IPv6 literal's colons would make the port
    // ambiguous (is "::1:80" port 80 of ::1, or the address ::1:80?).
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return fail(detail::invalid());
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return fail(detail::invalid());
  }
  auto number = detail::parse_port(port);
  if (!number) return fail(number.error());
  return ip(host, *number);
}

result<socket_address> socket_address::unix_path(std::string_view path) noexcept {
  if (path.empty() || path.find('\0') != std::string_view::npos) return fail(detail::invalid());
  if (path.size() + 1 > detail::sun_path_size) return fail(errno_code(ENAMETOOLONG));
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::memcpy(un.sun_path, path.data(), path.size());
  return socket_address(address_family::unix_path, &un, detail::sun_path_offset + path.size() + 1);
}

result<socket_address> socket_address::unix_abstract(std::string_view name) noexcept {
  if (!detail::has_abstract_unix) return fail(errno_code(EAFNOSUPPORT));
  if (name.size() + 1 > detail::sun_path_size) return fail(errno_code(ENAMETOOLONG));
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  // sun_path[0] stays NUL; the name's length is given by the address length, not a terminator.
  std::memcpy(un.sun_path + 1, name.data(), name.size());
  return socket_address(address_family::unix_abstract, &un,
                        detail::sun_path_offset + 1 + name.size());
}

result<socket_address> socket_address::from_native(const void* sa, unsigned len) noexcept {
  constexpr std::size_t family_end = offsetof(sockaddr, sa_family) + sizeof(sa_family_t);
  if (sa == nullptr || len < family_end || len > capacity) return fail(detail::invalid());
  // Copy first: the caller's buffer need not be aligned for any sockaddr type.
  sockaddr_storage ss{};
  std::memcpy(&ss, sa, len);
  switch (ss.ss_family) {
    case AF_INET: {
      sockaddr_in given{};
      if (len < sizeof given) return fail(detail::invalid());
      std::memcpy(&given, &ss, sizeof given);
      sockaddr_in in{};
      in.sin_family = AF_INET;
      in.sin_port = given.sin_port;
      in.sin_addr = given.sin_addr;
      return socket_address(address_family::ipv4, &in, sizeof in);
    }
    case AF_INET6: {
      sockaddr_in6 given{};
      if (len < sizeof given) return fail(detail::invalid());
      std::memcpy(&given, &ss, sizeof given);
      sockaddr_in6 in6{};
      in6.sin6_family = AF_INET6;
      in6.sin6_port = given.sin6_port;
      in6.sin6_addr = given.sin6_addr;
      in6.sin6_scope_id = given.sin6_scope_id;
      return socket_address(address_family::ipv6, &in6, sizeof in6);
    }
    case AF_UNIX: {
      if (len <= detail::sun_path_offset) return socket_address();
      sockaddr_un given{};
      std::memcpy(&given, &ss, std::min<std::size_t>(len, sizeof given));
      const std::size_t n =
          std::min<std::size_t>(len - detail::sun_path_offset, detail::sun_path_size);
      if (given.sun_path[0] == '\0') {
        // The BSDs and macOS report an unnamed socket with a zeroed sun_path and a longer length.
        if (!detail::has_abstract_unix) return socket_address();
        return unix_abstract(std::string_view(given.sun_path + 1, n - 1));
      }
      // Linux lets a socket bind a full sun_path with no terminator; such a path is kept as
      // is, without the NUL unix_path() would add.
      const std::size_t path_len = ::strnlen(given.sun_path, n);
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      std::memcpy(un.sun_path, given.sun_path, path_len);
      return socket_address(
          address_family::unix_path, &un,
          detail::sun_path_offset + path_len + (path_len < detail::sun_path_size ? 1 : 0));
    }
    default:
      return fail(errno_code(EAFNOSUPPORT));
  }
}

result<socket_address> socket_address::local_of(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return fail(sys::last_error());
  }
  return from_native(&ss, std::min<unsigned>(len, sizeof ss));
}

result<socket_address> socket_address::peer_of(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return fail(sys::last_error());
  }
  return from_native(&ss, std::min<unsigned>(len, sizeof ss));
}

std::uint16_t socket_address::port() const noexcept {
  if (family_ == address_family::ipv4) {
    sockaddr_in in;
    std::memcpy(&in, storage_, sizeof in);
    return ntohs(in.sin_port);
  }
  if (family_ == address_family::ipv6) {
    sockaddr_in6 in6;
    std::memcpy(&in6, storage_, sizeof in6);
    return ntohs(in6.sin6_port);
  }
  return 0;
}

std::uint32_t socket_address::scope_id() const noexcept {
  if (family_ != address_family::ipv6) return 0;
  sockaddr_in6 in6;
  std::memcpy(&in6, storage_, sizeof in6);
  return in6.sin6_scope_id;
}

std::string socket_address::host() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (family_ == address_family::ipv4) {
    sockaddr_in in;
    std::memcpy(&in, storage_, sizeof in);
    ::inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
    return text;
  }
  if (family_ == address_family::ipv6) {
    sockaddr_in6 in6;
    std::memcpy(&in6, storage_, sizeof in6);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text);
    std::string out = text;
    // Numeric, not the interface name: the index is what the address holds, and it parses
    // back even after the interface is renamed.
    if (in6.sin6_scope_id != 0) out += "%" + std::to_string(in6.sin6_scope_id);
    return out;
  }
  return {};
}

std::string_view socket_address::path() const noexcept {
  const char* sun_path = reinterpret_cast<const char*>(storage_) + detail::sun_path_offset;
  const std::size_t n = size_ - detail::sun_path_offset;
  if (family_ == address_family::unix_path) return {sun_path, ::strnlen(sun_path, n)};
  if (family_ == address_family::unix_abstract) return {sun_path + 1, n - 1};
  return {};
}

std::string socket_address::to_string() const {
  switch (family_) {
    case address_family::ipv4:
      return host() + ":" + std::to_string(port());
    case address_family::ipv6:
      return "[" + host() + "]:" + std::to_string(port());
    case address_family::unix_path: {
      const std::string_view p = path();
      // "unix:@x" would name the abstract socket "x"; "./@x" is the same file as "@x".
      const std::string_view prefix = !p.empty() && p.front() == '@' ? "unix:./" : "unix:";
      return std::string(prefix).append(p);
    }
    case address_family::unix_abstract:
      return std::string("unix:@").append(path());
    case address_family::unix_unnamed:
      return "unix:";
  }
  return {};
}

bool socket_address::operator==(const socket_address& other) const noexcept {
  return family_ == other.family_ && size_ == other.size_ &&
         std::memcmp(storage_, other.storage_, size_) == 0;
}

}  // namespace kin
