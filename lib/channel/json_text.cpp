// JSON checks for the Node channel codec (see json_text.hpp).
#include "channel/json_text.hpp"

#include <simdjson.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>

namespace kin::detail {

namespace {

constexpr std::size_t shared_parser_limit = 1024 * 1024;
// The deepest nesting accepted. JSON.parse has no limit; simdjson needs about 17 bytes a level
// while it parses such a text.
constexpr std::size_t max_json_depth = std::size_t{1} << 20;

bool is_json_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
bool is_json_number(std::string_view t) noexcept {
  std::size_t i = 0;
  auto digits = [&] {
    const std::size_t start = i;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9') ++i;
    return i > start;
  };
  if (i < t.size() && t[i] == '-') ++i;
  if (i < t.size() && t[i] == '0') {
    ++i;
  } else if (!digits()) {
    return false;
  }
  if (i < t.size() && t[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == t.size();
}

bool is_number_char(char c) noexcept {
  return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Whether buf[i..i+4) are four hex digits of a UTF-16 surrogate (D800-DFFF).
bool is_surrogate_escape(const char* buf, std::size_t i, std::size_t len) noexcept {
  if (i + 4 > len) return false;
  int v = 0;
  for (std::size_t k = i; k < i + 4; ++k) {
    const int h = hex_value(buf[k]);
    if (h < 0) return false;
    v = v * 16 + h;
  }
  return v >= 0xD800 && v <= 0xDFFF;
}

// simdjson refuses some texts JSON.parse accepts: numbers it cannot hold (integers past 64
// bits, exponents past a double's) and escaped UTF-16 surrogates that are not paired (which
// JSON.stringify writes for a lone surrogate). In `buf`, every number token outside strings is
// replaced by a 0 padded with spaces (after checking it against JSON's grammar: false if one
// fails), and every surrogate escape by \u003F, a question mark, which no name kin looks for
// holds (same lengths), so that a text valid but for
// those parses.
bool neutralize(char* buf, std::size_t len) noexcept {
  bool in_string = false;
  for (std::size_t i = 0; i < len; ++i) {
    const char c = buf[i];
    if (in_string) {
      if (c == '\\') {
        if (i + 1 < len && buf[i + 1] == 'u' && is_surrogate_escape(buf, i + 2, len)) {
          std::memcpy(buf + i + 2, "003F", 4);
          i += 5;
        } else {
          ++i;
        }
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      continue;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      std::size_t end = i;
      while (end < len && is_number_char(buf[end])) ++end;
      if (!is_json_number(std::string_view(buf + i, end - i))) return false;
      buf[i] = '0';
      std::memset(buf + i + 1, ' ', end - i - 1);
      i = end - 1;
    }
  }
  return true;
}

// The string a JSON string element holds, or nothing for another type.
std::optional<std::string> string_of(simdjson::dom::element e) {
  std::string_view s;
  if (e.get_string().get(s) != simdjson::SUCCESS) return std::nullopt;
  return std::string(s);
}

// The last top-level member named `key` (JSON.parse keeps the last of duplicates).
std::optional<simdjson::dom::element> last_member(simdjson::dom::object obj, std::string_view key) {
  std::optional<simdjson::dom::element> found;
  for (auto field : obj) {
    if (field.key == key) found = field.value;
  }
  return found;
}

json_facts facts_of(simdjson::dom::element root) {
  json_facts f;
  f.check = json_facts::verdict::valid;
  simdjson::dom::object obj;
  if (root.get_object().get(obj) != simdjson::SUCCESS) return f;
  f.object = true;
  if (auto cmd = last_member(obj, "cmd")) f.cmd = string_of(*cmd);
  if (auto type = last_member(obj, "type")) f.type = string_of(*type);
  return f;
}

}  // namespace

std::string_view json_trim(std::string_view text) noexcept {
  while (!text.empty() && is_json_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_json_space(text.back())) text.remove_suffix(1);
  return text;
}

json_facts inspect_json(std::string_view text) {
  // One parser and one padded buffer per thread for the common small texts (they keep their
  // memory); a large text gets its own, so that one big message does not pin its memory for
  // the thread's life. simdjson reads up to SIMDJSON_PADDING bytes past the end.
  thread_local simdjson::dom::parser shared;
  thread_local std::string shared_copy;
  std::unique_ptr<simdjson::dom::parser> own;
  std::string own_copy;
  simdjson::dom::parser* parser = &shared;
  std::string* copy = &shared_copy;
  if (text.size() > shared_parser_limit) {
    own = std::make_unique<simdjson::dom::parser>();
    parser = own.get();
    copy = &own_copy;
  }
  copy->reserve(text.size() + simdjson::SIMDJSON_PADDING);
  copy->assign(text);
  simdjson::dom::element root;
  auto error = parser->parse(copy->data(), copy->size(), false).get(root);
  if (error != simdjson::SUCCESS && error != simdjson::UTF8_ERROR && error != simdjson::MEMALLOC) {
    // Perhaps a number or an escape simdjson will not hold (the error's name differs between
    // versions): with those checked and replaced, a text that was otherwise valid parses. The
    // facts (cmd, type) are then read from the replaced text: a surrogate in them, now a '?',
    // cannot make them equal a name kin looks for, nor change whether they start with "NODE_".
    if (!neutralize(copy->data(), copy->size())) return {};
    error = parser->parse(copy->data(), copy->size(), false).get(root);
  }
  std::unique_ptr<simdjson::dom::parser> deep;
  if (error == simdjson::DEPTH_ERROR) {
    // Deeper than simdjson's default 1024 levels, which JSON.parse takes: a parser of its own,
    // as deep as the text can nest (each level takes a byte), up to max_json_depth.
    deep = std::make_unique<simdjson::dom::parser>();
    const std::size_t depth = std::min(copy->size() / 2 + 1, max_json_depth);
    if (deep->allocate(copy->size(), depth) != simdjson::SUCCESS) throw std::bad_alloc();
    error = deep->parse(copy->data(), copy->size(), false).get(root);
  }
  if (error == simdjson::UTF8_ERROR) {
    json_facts f;
    f.check = json_facts::verdict::bad_utf8;
    return f;
  }
  if (error == simdjson::MEMALLOC) throw std::bad_alloc();
  if (error != simdjson::SUCCESS) return {};
  return facts_of(root);
}

namespace {

// From `i` at the start of a value in valid JSON, the index just past it.
std::size_t skip_value(std::string_view t, std::size_t i) noexcept {
  int depth = 0;
  bool in_string = false;
  for (; i < t.size(); ++i) {
    const char c = t[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
        if (depth == 0) return i + 1;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '{':
      case '[':
        ++depth;
        break;
      case '}':
      case ']':
        if (depth == 0) return i;  // the end of the enclosing container: a scalar ended
        if (--depth == 0) return i + 1;
        break;
      case ',':
      case ' ':
      case '\t':
      case '\n':
      case '\r':
        if (depth == 0) return i;
        break;
      default:
        break;
    }
  }
  return i;
}

std::size_t skip_space(std::string_view t, std::size_t i) noexcept {
  while (i < t.size() && is_json_space(t[i])) ++i;
  return i;
}

// The unescaped text of the JSON string literal t[begin, end) (quotes included), enough to
// compare with an ASCII key: escapes of non-ASCII code points become '?'.
std::string unescape_key(std::string_view literal) {
  std::string out;
  for (std::size_t i = 1; i + 1 < literal.size(); ++i) {
    char c = literal[i];
    if (c != '\\') {
      out += c;
      continue;
    }
    c = literal[++i];
    switch (c) {
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        unsigned cp = 0;
        for (int k = 0; k < 4 && i + 1 < literal.size(); ++k) {
          const char h = literal[++i];
          cp = cp * 16 + static_cast<unsigned>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        out += cp < 0x80 ? static_cast<char>(cp) : '?';
        break;
      }
      default:
        out += c;
        break;  // " \ /
    }
  }
  return out;
}

}  // namespace

std::optional<std::string_view> json_member(std::string_view object, std::string_view key) {
  std::optional<std::string_view> found;
  std::size_t i = skip_space(object, 0);
  if (i >= object.size() || object[i] != '{') return found;
  i = skip_space(object, i + 1);
  while (i < object.size() && object[i] == '"') {
    const std::size_t key_end = skip_value(object, i);
    const std::string_view literal = object.substr(i, key_end - i);
    i = skip_space(object, key_end);
    if (i >= object.size() || object[i] != ':') break;
    i = skip_space(object, i + 1);
    const std::size_t value_end = skip_value(object, i);
    const std::string_view value = object.substr(i, value_end - i);
    const bool plain = literal.find('\\') == std::string_view::npos;
    if (plain ? literal.substr(1, literal.size() - 2) == key : unescape_key(literal) == key) {
      found = value;
    }
    i = skip_space(object, value_end);
    if (i >= object.size() || object[i] != ',') break;
    i = skip_space(object, i + 1);
  }
  return found;
}

std::string json_minify(std::string_view text) {
  std::string out(text.size(), '\0');
  std::size_t length = 0;
  if (simdjson::minify(text.data(), text.size(), out.data(), length) != simdjson::SUCCESS) {
    return std::string(text);  // only for text that was not valid JSON
  }
  out.resize(length);
  return out;
}

}  // namespace kin::detail
