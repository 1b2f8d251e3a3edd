// Byte-exact JSON string literals in the two dialects checkpoint files use:
//  - serde_json's compact form, which the Rust `safetensors` library writes into safetensors headers
//    (UTF-8 passes through; '"', '\\' and control characters are escaped);
//  - Python's json.dumps with ensure_ascii=True, which transformers uses for model.safetensors.index.json
//    (additionally every character outside printable ASCII becomes \uXXXX, UTF-16 surrogate pairs above U+FFFF).
// Both require valid UTF-8 input (check with IsValidUtf8 first).
#pragma once

#include <string>
#include <string_view>

namespace fm {

// Appends `"text"` as serde_json writes it.
void AppendSerdeJsonString(std::string* out, std::string_view text);

// Appends `"text"` as Python's json.dumps(..., ensure_ascii=True) writes it.
void AppendPythonAsciiJsonString(std::string* out, std::string_view text);

}  // namespace fm
