// JSON text as Node writes it: bytes decoded as UTF-8 the way Node decodes a Buffer (each
// maximal ill-formed subsequence becomes one U+FFFD), then quoted as JSON.stringify quotes.
#pragma once

#include "utf8.hpp"

#include <string>
#include <string_view>

namespace kin_run {

/// `bytes` decoded as UTF-8 as Node decodes them (see lib/utf8.hpp).
inline std::string decode_utf8(std::string_view bytes) { return kin::detail::decode_utf8(bytes); }

/// A JSON string literal (with its quotes) of well-formed UTF-8 `text`, escaped as
/// JSON.stringify does: \" \\ \b \f \n \r \t, \u00XX for other control characters, the rest
/// as is.
std::string json_quote(std::string_view text);

}  // namespace kin_run
