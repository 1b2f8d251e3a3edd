#include "client/cli/spec_file.h"

#include <charconv>
#include <fstream>
#include <regex>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include "worker/engine/common/str_cat.h"

namespace fm::client {
namespace {

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A plain (unquoted) YAML scalar typed by the YAML 1.2 core schema.
nlohmann::json PlainScalar(const std::string& v) {
  static const std::regex kInt("[-+]?[0-9]+");
  static const std::regex kFloat("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  if (v.empty() || v == "~" || v == "null" || v == "Null" || v == "NULL") return nullptr;
  if (v == "true" || v == "True" || v == "TRUE") return true;
  if (v == "false" || v == "False" || v == "FALSE") return false;
  if (v == ".inf" || v == ".Inf" || v == ".INF" || v == "+.inf" || v == "+.Inf" || v == "+.INF") return "Infinity";
  if (v == "-.inf" || v == "-.Inf" || v == "-.INF") return "-Infinity";
  if (v == ".nan" || v == ".NaN" || v == ".NAN") return "NaN";
  if (std::regex_match(v, kInt)) {
    const char* b = v.data() + (v[0] == '+' ? 1 : 0);
    const char* e = v.data() + v.size();
    if (v[0] == '-') {
      int64_t i;
      if (auto r = std::from_chars(b, e, i); r.ec == std::errc() && r.ptr == e) return i;
    } else {
      uint64_t u;
      if (auto r = std::from_chars(b, e, u); r.ec == std::errc() && r.ptr == e) return u;
    }
    return v;  // out of range: the proto parser reports it for the field
  }
  if (std::regex_match(v, kFloat)) {
    try {
      return std::stod(v);
    } catch (...) {
      return v;
    }
  }
  return v;
}

absl::Status Convert(const YAML::Node& node, const std::string& name, nlohmann::json& out) {
  auto where = [&] { return StrCat(name, ": line ", node.Mark().line + 1, ", column ", node.Mark().column + 1); };
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      out = nullptr;
      return absl::OkStatus();
    case YAML::NodeType::Scalar:
      // Tag "!" marks a quoted scalar, "!!str" an explicit string: both stay strings.
      if (node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str") {
        out = node.Scalar();
      } else {
        out = PlainScalar(node.Scalar());
      }
      return absl::OkStatus();
    case YAML::NodeType::Sequence:
      out = nlohmann::json::array();
      for (const YAML::Node& item : node) {
        nlohmann::json v;
        if (absl::Status s = Convert(item, name, v); !s.ok()) return s;
        out.push_back(std::move(v));
      }
      return absl::OkStatus();
    case YAML::NodeType::Map:
      out = nlohmann::json::object();
      for (const auto& kv : node) {
        if (!kv.first.IsScalar()) return absl::InvalidArgumentError(StrCat(where(), ": map keys must be scalars"));
        const std::string key = kv.first.Scalar();
        if (out.contains(key)) return absl::InvalidArgumentError(StrCat(where(), ": duplicate key \"", key, "\""));
        nlohmann::json v;
        if (absl::Status s = Convert(kv.second, name, v); !s.ok()) return s;
        out[key] = std::move(v);
      }
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(StrCat(where(), ": unsupported YAML node"));
}

}  // namespace

absl::StatusOr<std::string> YamlToJson(const std::string& yaml, const std::string& name) {
  try {
    const YAML::Node root = YAML::Load(yaml);
    nlohmann::json j;
    if (absl::Status s = Convert(root, name, j); !s.ok()) return s;
    return j.dump();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        StrCat(name, ": line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(StrCat(name, ": ", e.what()));
  }
}

absl::StatusOr<flashmorph::v1::ConversionSpec> ParseSpec(const std::string& text, const std::string& name) {
  std::string json;
  if (EndsWith(name, ".json") || EndsWith(name, ".JSON")) {
    json = text;
  } else {
    auto converted = YamlToJson(text, name);
    if (!converted.ok()) return converted.status();
    json = std::move(*converted);
  }
  // Strict JSON first (protobuf's parser tolerates trailing commas); an empty document, or one that is not a
  // mapping, is not a spec.
  nlohmann::json parsed;
  try {
    parsed = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(StrCat(name, ": not valid JSON: ", e.what()));
  }
  if (parsed.is_null()) {
    return absl::InvalidArgumentError(StrCat(name, ": empty spec"));
  } else if (!parsed.is_object()) {
    return absl::InvalidArgumentError(StrCat(name, ": the spec must be a mapping of ConversionSpec fields"));
  }
  flashmorph::v1::ConversionSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &spec, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(StrCat(name, ": not a ConversionSpec: ", status.message().ToString()));
  }
  return spec;
}

absl::StatusOr<flashmorph::v1::ConversionSpec> LoadSpecFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat("spec file ", path, ": cannot open"));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) return absl::DataLossError(StrCat("spec file ", path, ": read error"));
  return ParseSpec(s.str(), path);
}

}  // namespace fm::client
