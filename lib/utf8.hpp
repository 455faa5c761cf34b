// UTF-8 decoding with replacement: what Node (V8, the WHATWG Encoding standard) does with bytes
// that are not well-formed UTF-8. Used by the Node channel codec; kin-run builds it in too.
#pragma once

#include <string>
#include <string_view>

namespace kin::detail {

/// `bytes` decoded as UTF-8 with every maximal ill-formed subsequence replaced by U+FFFD (the
/// WHATWG "decode" rule, which V8 and so Node follow), encoded back as well-formed UTF-8.
std::string decode_utf8(std::string_view bytes);

}  // namespace kin::detail
