// The Node channel codec's decoder and line builders (see node_frame.hpp).
#include "channel/node_frame.hpp"

#include "channel/json_text.hpp"
#include "utf8.hpp"

#include <algorithm>
#include <cstring>

#include <sys/socket.h>

namespace kin::detail {

namespace {

constexpr std::string_view internal_prefix = "NODE_";

// Node's isInternal(): a string cmd longer than the prefix that starts with it.
bool is_internal(const json_facts& f) noexcept {
  return f.object && f.cmd && f.cmd->size() > internal_prefix.size() &&
         f.cmd->starts_with(internal_prefix);
}

bool is_handle_type(std::string_view type) noexcept {
  return type == "net.Socket" || type == "net.Server" || type == "net.Native" ||
         type == "dgram.Socket" || type == "dgram.Native";
}

}  // namespace

result<void> node_decoder::feed(std::span<const std::byte> bytes, std::span<unique_fd> fds) {
  // Descriptors are owned from the moment they arrive, so that every path closes them.
  for (unique_fd& fd : fds) fds_.push_back(std::move(fd));
  const std::size_t arrived_now = fds.size();
  if (spoiled_) return spoil(spoiled_);
  std::string_view rest(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  while (!rest.empty()) {
    const auto* nl = static_cast<const char*>(std::memchr(rest.data(), '\n', rest.size()));
    if (nl == nullptr) {
      if (rest.size() > max_line_ - std::min(max_line_, pending_.size())) {
        return spoil(make_error_code(errc::frame_too_large));
      }
      pending_.append(rest);
      break;
    }
    const auto length = static_cast<std::size_t>(nl - rest.data());
    if (length > max_line_ - std::min(max_line_, pending_.size())) {
      return spoil(make_error_code(errc::frame_too_large));
    }
    result<void> r;
    if (pending_.empty()) {
      r = decode_line(rest.substr(0, length));
    } else {
      pending_.append(rest.data(), length);
      std::string line = std::move(pending_);
      pending_.clear();
      r = decode_line(line);
    }
    if (!r) return r;
    rest.remove_prefix(length + 1);
  }
  // A descriptor rides on its NODE_HANDLE line's first byte, and a read ends where the segment
  // that carried descriptors ends. A descriptor that has waited through a whole later read
  // while every byte formed complete lines belongs to no line.
  if (pending_.empty() && fds_.size() > arrived_now) {
    return spoil(make_error_code(errc::stray_descriptor));
  }
  return {};
}

result<void> node_decoder::decode_line(std::string_view line) {
  std::string_view text = json_trim(line);
  // JSON.parse('') throws: an empty line (or one of whitespace) is not a message.
  if (text.empty()) return spoil(make_error_code(errc::malformed_message));
  json_facts facts = inspect_json(text);
  std::string repaired;
  if (facts.check == json_facts::verdict::bad_utf8) {
    // Node decodes the bytes first, each ill-formed sequence becoming U+FFFD.
    repaired = decode_utf8(text);
    text = repaired;
    facts = inspect_json(text);
  }
  if (facts.check != json_facts::verdict::valid) {
    return spoil(make_error_code(errc::malformed_message));
  }
  node_message m;
  if (!is_internal(facts)) {
    m.text.assign(text);
    ready_.push_back(std::move(m));
    return {};
  }
  const std::string& cmd = *facts.cmd;
  if (cmd == "NODE_HANDLE_ACK" || cmd == "NODE_HANDLE_NACK") {
    m.type =
        cmd == "NODE_HANDLE_ACK" ? node_message::kind::handle_ack : node_message::kind::handle_nack;
    ready_.push_back(std::move(m));
    return {};
  }
  if (cmd != "NODE_HANDLE") {
    m.type = node_message::kind::internal;
    m.text.assign(text);
    ready_.push_back(std::move(m));
    return {};
  }
  // A NODE_HANDLE: its descriptor came with (or before) its first byte.
  if (fds_.empty()) {
    nack_owed_ = true;
    return spoil(make_error_code(errc::message_truncated));
  }
  std::optional<std::string_view> msg = json_member(text, "msg");
  if (!facts.type || !msg) return spoil(make_error_code(errc::malformed_message));
  std::string type = std::move(*facts.type);
  json_facts inner = inspect_json(*msg);
  // Node sends a refused net.Socket again as a raw handle around the first envelope:
  // {"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_HANDLE","type":...,"msg":...}}
  // It is one handle (and gets one acknowledgement).
  if (type == "net.Native" && inner.object && inner.cmd && *inner.cmd == "NODE_HANDLE") {
    const std::string_view envelope = *msg;
    msg = json_member(envelope, "msg");
    if (!inner.type || !msg) return spoil(make_error_code(errc::malformed_message));
    type = std::move(*inner.type);
    inner = inspect_json(*msg);
  }
  if (!is_handle_type(type)) return spoil(make_error_code(errc::unknown_handle_type));
  m.type = is_internal(inner) ? node_message::kind::internal : node_message::kind::user;
  m.text.assign(*msg);
  m.handle = true;
  m.fd = std::move(fds_.front());
  fds_.pop_front();
  ready_.push_back(std::move(m));
  return {};
}

std::optional<node_message> node_decoder::next() noexcept {
  if (ready_.empty()) return std::nullopt;
  node_message m = std::move(ready_.front());
  ready_.pop_front();
  return m;
}

result<void> node_decoder::finish() noexcept {
  if (spoiled_) return spoil(spoiled_);
  if (!json_trim(pending_).empty()) return spoil(make_error_code(errc::message_truncated));
  if (!fds_.empty()) return spoil(make_error_code(errc::stray_descriptor));
  return {};
}

result<void> node_decoder::spoil(std::error_code ec) noexcept {
  spoiled_ = ec;
  fds_.clear();
  pending_.clear();
  return fail(ec);
}

result<std::string> node_line(std::string_view json) {
  const json_facts facts = inspect_json(json);
  if (facts.check != json_facts::verdict::valid) {
    return fail(make_error_code(errc::malformed_message));
  }
  if (facts.object && facts.cmd &&
      (*facts.cmd == "NODE_HANDLE" || *facts.cmd == "NODE_HANDLE_ACK" ||
       *facts.cmd == "NODE_HANDLE_NACK")) {
    return fail(make_error_code(errc::malformed_message));
  }
  std::string line;
  if (json.find('\n') != std::string_view::npos) {
    line = json_minify(json);
  } else {
    line.reserve(json.size() + 1);
    line.assign(json);
  }
  line += '\n';
  return line;
}

result<std::string> node_handle_line(std::string_view line, fd_kind kind, int family, bool raw) {
  std::string_view type;
  std::string_view extra;
  switch (kind) {
    case fd_kind::tcp_socket:
    case fd_kind::unix_stream_socket:
    case fd_kind::pipe:
      type = "net.Socket";
      break;
    case fd_kind::tcp_server:
    case fd_kind::unix_server:
      type = "net.Server";
      break;
    case fd_kind::udp_socket:
      type = raw ? "dgram.Native" : "dgram.Socket";
      extra = family == AF_INET6 ? R"(,"dgramType":"udp6")" : R"(,"dgramType":"udp4")";
      break;
    default:
      return fail(errno_code(EINVAL));
  }
  if (raw && kind != fd_kind::udp_socket) type = "net.Native";
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  constexpr std::string_view head = R"({"cmd":"NODE_HANDLE","type":")";
  constexpr std::string_view middle = R"(","msg":)";
  std::string out;
  out.reserve(head.size() + type.size() + middle.size() + line.size() + extra.size() + 2);
  out.append(head).append(type).append(middle).append(line).append(extra).append("}\n");
  return out;
}

}  // namespace kin::detail
