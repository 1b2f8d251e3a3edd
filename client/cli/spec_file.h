// ConversionSpec files for `flashmorph submit --spec FILE`: the spec in the proto3 JSON mapping, written as JSON
// (*.json) or YAML (any other name). YAML is converted to JSON first: plain scalars that read as null, true/false,
// integers or floats become JSON nulls, booleans and numbers, everything else (quoted scalars included) strings.
// Unknown fields are errors. Every error is INVALID_ARGUMENT (NOT_FOUND for a missing file) and names the file.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "flashmorph/v1/conversion_spec.pb.h"

namespace fm::client {

// The JSON text of a YAML document (`name` is used in error messages).
absl::StatusOr<std::string> YamlToJson(const std::string& yaml, const std::string& name);

// Parses the spec from `text`; `name` decides the syntax (".json": JSON, else YAML) and prefixes errors.
absl::StatusOr<flashmorph::v1::ConversionSpec> ParseSpec(const std::string& text, const std::string& name);

// Reads and parses the spec file at `path`.
absl::StatusOr<flashmorph::v1::ConversionSpec> LoadSpecFile(const std::string& path);

}  // namespace fm::client
