// libFuzzer target for the Node.js channel decoder (lib/channel/node_frame.cpp). An input is a
// script (fuzz_script.hpp): a byte stream cut anywhere, with descriptors arriving with any
// chunk. Every message must be one a channel can hand up (text without a line break, valid
// UTF-8, a user message that node_line() sends back unchanged, a descriptor exactly when it came
// in a NODE_HANDLE, taken in arrival order); every descriptor handed in must come out in a
// message or be closed by the decoder, the moment it is spent; and a stream without descriptors
// decodes the same whole, cut as the script says, and byte by byte.
#include "channel/node_frame.hpp"
#include "fuzz_script.hpp"

#include <kin/result.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace {

using kin::detail::node_decoder;
using kin::detail::node_message;

bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (b < 0x80) {
      ++i;
      continue;
    } else if (b >= 0xC2 && b <= 0xDF) {
      n = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      n = 2;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      n = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return false;
    }
    i += n + 1;
  }
  return true;
}

struct seen {
  node_message::kind type;
  std::string text;
  bool handle;
  friend bool operator==(const seen&, const seen&) = default;
};

struct outcome {
  std::vector<seen> messages;
  std::error_code error;
};

enum class cut { as_scripted, whole, bytes };

// Feeds the script to a decoder, checking after every call what holds at that point.
outcome decode(const kin_fuzz::script& s, cut how) {
  kin_fuzz::fd_pool pool(s.fds);
  const std::vector<int>& numbers = pool.numbers();
  node_decoder d(s.limit);
  outcome out;
  bool error_from_feed = false;
  std::vector<node_message> held;  // messages out of the decoder, their descriptors still open
  std::size_t claimed = 0;         // descriptors in messages so far
  auto drain = [&] {
    while (std::optional<node_message> m = d.next()) {
      const std::string& text = m->text;
      KIN_FUZZ_CHECK(text.find('\n') == std::string::npos);
      if (m->type == node_message::kind::user || m->type == node_message::kind::internal) {
        KIN_FUZZ_CHECK(!text.empty());
      } else {
        KIN_FUZZ_CHECK(!m->handle);
      }
      if (!text.empty()) {
        KIN_FUZZ_CHECK(!is_json_space(text.front()) && !is_json_space(text.back()));
        KIN_FUZZ_CHECK(is_utf8(text));
      }
      if (m->type == node_message::kind::user) {
        // What a channel received it can send on as it is.
        const kin::result<std::string> line = kin::detail::node_line(text);
        KIN_FUZZ_CHECK(line && *line == text + '\n');
      }
      KIN_FUZZ_CHECK(m->handle == m->fd.is_open());
      if (m->fd) {
        // The oldest descriptor waiting, each once.
        KIN_FUZZ_CHECK(claimed < numbers.size() && m->fd.get() == numbers[claimed]);
        ++claimed;
      }
      out.messages.push_back({m->type, text, m->handle});
      held.push_back(std::move(*m));
    }
  };
  auto step = [&](std::span<const std::byte> bytes, std::size_t fd_count, bool hold) {
    const std::size_t before = pool.given();
    std::vector<kin::unique_fd> fds = pool.take(fd_count);
    const kin::result<void> r = d.feed(bytes, fds);
    for (const kin::unique_fd& fd : fds) KIN_FUZZ_CHECK(!fd.is_open());  // all taken over
    if (out.error) {
      // Spent: every later call fails the same way, nothing more comes out, and descriptors
      // handed in now are closed at once.
      KIN_FUZZ_CHECK(!r && r.error() == out.error);
      KIN_FUZZ_CHECK(!d.next());
      for (bool o : pool.open(before, pool.given())) KIN_FUZZ_CHECK(!o);
    } else if (!r) {
      out.error = r.error();
      error_from_feed = true;
      drain();  // the messages before the bad line stay available
      // Every descriptor that is not in one of them is closed already, and none that is.
      const std::vector<bool>& open = pool.open(0, pool.given());
      for (std::size_t k = 0; k < open.size(); ++k) KIN_FUZZ_CHECK(open[k] == (k < claimed));
    } else if (!hold) {
      drain();
    }
    // A NACK is owed exactly when a NODE_HANDLE line came without its descriptor.
    KIN_FUZZ_CHECK(d.nack_owed() ==
                   (error_from_feed && out.error == make_error_code(kin::errc::message_truncated)));
  };
  switch (how) {
    case cut::as_scripted:
      for (const kin_fuzz::chunk& c : s.chunks) step(c.bytes, c.fds, c.hold);
      break;
    case cut::whole:
      step(std::as_bytes(std::span(s.stream)), s.fds, false);
      break;
    case cut::bytes:
      for (std::size_t i = 0; i < s.stream.size(); ++i) {
        step(std::as_bytes(std::span(s.stream).subspan(i, 1)), 0, false);
      }
      break;
  }
  const kin::result<void> f = d.finish();
  if (out.error) {
    KIN_FUZZ_CHECK(!f && f.error() == out.error);
  } else if (!f) {
    out.error = f.error();
  }
  drain();
  KIN_FUZZ_CHECK(!d.next());
  KIN_FUZZ_CHECK(d.nack_owed() ==
                 (error_from_feed && out.error == make_error_code(kin::errc::message_truncated)));
  // A finished decoder holds no descriptor; the messages hold theirs until they are dropped.
  const std::vector<bool>& open = pool.open();
  for (std::size_t k = 0; k < open.size(); ++k) KIN_FUZZ_CHECK(open[k] == (k < claimed));
  held.clear();
  for (bool o : pool.open()) KIN_FUZZ_CHECK(!o);
  return out;
}

// Each complete line of the stream gives one message, in order, until the first error; and a
// message from a line of valid UTF-8 is that line without the whitespace around it (or, from a
// NODE_HANDLE, a piece of it).
void check_lines(const kin_fuzz::script& s, const outcome& out) {
  std::vector<std::string_view> lines;
  std::string_view rest = s.stream;
  for (std::size_t nl; (nl = rest.find('\n')) != std::string_view::npos;) {
    lines.push_back(rest.substr(0, nl));
    rest.remove_prefix(nl + 1);
  }
  KIN_FUZZ_CHECK(out.messages.size() <= lines.size());
  if (!out.error) KIN_FUZZ_CHECK(out.messages.size() == lines.size());
  for (std::size_t i = 0; i < out.messages.size(); ++i) {
    std::string_view line = lines[i];
    while (!line.empty() && is_json_space(line.front())) line.remove_prefix(1);
    while (!line.empty() && is_json_space(line.back())) line.remove_suffix(1);
    const seen& m = out.messages[i];
    if (!is_utf8(line) || m.type == node_message::kind::handle_ack ||
        m.type == node_message::kind::handle_nack) {
      continue;
    }
    if (m.handle) {
      KIN_FUZZ_CHECK(line.find(m.text) != std::string_view::npos);
    } else {
      KIN_FUZZ_CHECK(m.text == line);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const kin_fuzz::script s = kin_fuzz::read_script(data, size);
  const outcome scripted = decode(s, cut::as_scripted);
  check_lines(s, scripted);
  // Without descriptors, where the stream is cut cannot matter.
  if (s.fds == 0) {
    const outcome whole = decode(s, cut::whole);
    KIN_FUZZ_CHECK(whole.error == scripted.error && whole.messages == scripted.messages);
    if (s.stream.size() <= 4096) {
      const outcome bytes = decode(s, cut::bytes);
      KIN_FUZZ_CHECK(bytes.error == scripted.error && bytes.messages == scripted.messages);
    }
  }
  return 0;
}
