#pragma once
// A bound on the nesting of JSON text, checked by a flat scan before the text
// is parsed: nlohmann-json's copy and dump of a parsed value recurse once per
// level, so a header of 100 000 nested brackets would exhaust the stack.
#include <cstddef>
#include <string_view>

namespace chargpt {

// The nesting a safetensors header needs: the header object, a tensor's entry,
// its shape or offsets list.
inline constexpr int kMaxHeaderDepth = 3;

// The deepest nesting of arrays and objects in `json` (brackets inside strings
// do not count), scanning no further than one level past `limit`.
int json_depth(std::string_view json, int limit);

}  // namespace chargpt
