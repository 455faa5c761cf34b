// JSON texts as the Node channel codec needs them: checked with simdjson to be exactly one JSON
// text as JSON.parse would accept it, the top-level "cmd" and "type" of an object read, and the
// exact text of a member's value found (a NODE_HANDLE's "msg" is handed up as it was written).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kin::detail {

/// What inspect_json() found.
struct json_facts {
  enum class verdict {
    valid,     ///< exactly one JSON text
    invalid,   ///< not JSON, nothing but whitespace, or more than one text
    bad_utf8,  ///< not well-formed UTF-8 (JSON.parse would see U+FFFD where Node decodes it)
  };
  verdict check = verdict::invalid;
  /// For an object: its top-level "cmd" and "type" (the last of each, as JSON.parse keeps),
  /// when they are strings. Unescaped.
  std::optional<std::string> cmd;
  std::optional<std::string> type;
  bool object = false;
};

/// Checks `text` with simdjson. Numbers JSON allows but simdjson will not hold (integers
/// beyond 64 bits, exponents beyond a double: JSON.parse gives an approximation or Infinity),
/// escaped lone surrogates (JSON.stringify writes them) and nesting deeper than simdjson's
/// default 1024 levels are accepted, the nesting up to 2^20 levels (JSON.parse has no limit).
/// Never throws but std::bad_alloc.
json_facts inspect_json(std::string_view text);

/// The text of the value of the top-level member `key` of the JSON object `object` (the last
/// such member), without surrounding whitespace. `object` must be valid JSON.
std::optional<std::string_view> json_member(std::string_view object, std::string_view key);

/// `text` without JSON whitespace around it.
std::string_view json_trim(std::string_view text) noexcept;

/// Valid JSON `text` with the whitespace outside strings removed (simdjson::minify).
std::string json_minify(std::string_view text);

}  // namespace kin::detail
