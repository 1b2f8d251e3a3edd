// Helpers shared by the safetensors and checkpoint-directory tests (header-only: each *_test.cc is its own binary).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "nlohmann/json.hpp"

namespace fm::testing {

// A safetensors file: 8-byte little-endian length (of `header`, unless `declared_len` is given), header, data.
inline std::string StFile(std::string_view header, std::string_view data = "", int64_t declared_len = -1) {
  uint64_t n = declared_len < 0 ? header.size() : static_cast<uint64_t>(declared_len);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.append(header);
  out.append(data);
  return out;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteBytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline nlohmann::json LoadJson(const std::string& path) { return nlohmann::json::parse(ReadBytes(path)); }

inline std::string Fixture(std::string_view name) { return std::string(FM_FIXTURES_DIR "/safetensors/") += name; }

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fm_st_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

// Runs `FM_PYTHON tests/parity/<script> args...` and returns its exit status (-1 if it did not exit normally).
inline int RunPythonScript(const std::string& script, const std::string& args) {
  std::string cmd = std::string("'") + FM_PYTHON + "' '" + FM_SOURCE_DIR + "/tests/parity/" + script + "' " + args;
  int rc = std::system(cmd.c_str());
  return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace fm::testing
