// UTF-8 decoding with replacement, as Node decodes bytes into a string.
#include "utf8.hpp"

#include <cstdint>

namespace kin::detail {

namespace {

void put_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

constexpr std::uint32_t replacement = 0xFFFD;

}  // namespace

std::string decode_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::uint32_t cp = 0;
  int needed = 0;
  int seen = 0;
  unsigned lower = 0x80;
  unsigned upper = 0xBF;
  std::size_t i = 0;
  while (i < bytes.size()) {
    const unsigned b = static_cast<unsigned char>(bytes[i]);
    if (needed == 0) {
      ++i;
      if (b < 0x80) {
        out += static_cast<char>(b);
      } else if (b >= 0xC2 && b <= 0xDF) {
        needed = 1;
        cp = b & 0x1F;
      } else if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0) lower = 0xA0;  // no overlong three-byte forms
        if (b == 0xED) upper = 0x9F;  // no surrogates
        needed = 2;
        cp = b & 0x0F;
      } else if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0) lower = 0x90;  // no overlong four-byte forms
        if (b == 0xF4) upper = 0x8F;  // nothing above U+10FFFF
        needed = 3;
        cp = b & 0x07;
      } else {
        put_utf8(out, replacement);
      }
      continue;
    }
    if (b < lower || b > upper) {
      // The sequence so far is one ill-formed subsequence; this byte starts afresh (it is not
      // consumed).
      cp = 0;
      needed = 0;
      seen = 0;
      lower = 0x80;
      upper = 0xBF;
      put_utf8(out, replacement);
      continue;
    }
    ++i;
    lower = 0x80;
    upper = 0xBF;
    cp = (cp << 6) | (b & 0x3F);
    if (++seen == needed) {
      put_utf8(out, cp);
      cp = 0;
      needed = 0;
      seen = 0;
    }
  }
  if (needed != 0) put_utf8(out, replacement);  // cut off at the end
  return out;
}

}  // namespace kin::detail
