// Durability of `flashmorph convert`: the process is killed with SIGKILL at several instants, rerun each time with
// the same command, and must end with exactly the layout and gate values of an uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

std::vector<std::string> Command(const std::string& out) {
  return {FM_FLASHMORPH_BIN, "convert", "--model", FM_SOURCE_DIR "/models/demo/qwen3-demo", "--out", out,
          "--fa-ratio", "0.25", "--seed", "3", "--threads", "1", "--quiet", "--calibration-tokens", "3072",
          "--gate-tokens", "1200", "--min-context", "112", "--max-context", "128", "--passkeys", "1",
          "--passkey-words", "4", "--distill-tokens", "1024", "--long-context-tokens", "256", "--no-eval"};
}

pid_t Start(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

nlohmann::json Layout(const std::string& out) {
  std::ifstream in(out + "/conversion_layout.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str())["layout"];
}

TEST(ConvertKill, SigkillAtAnyInstantThenRerunGivesTheSameLayout) {
  const std::string base = ::testing::TempDir() + "/kill_";
  for (const char* d : {"ref", "ref.work", "victim", "victim.work"}) fs::remove_all(base + d);
  ASSERT_EQ(Wait(Start(Command(base + "ref"))), 0);
  const nlohmann::json want = Layout(base + "ref");

  const std::vector<std::string> victim = Command(base + "victim");
  int kills = 0;
  for (int delay_ms : {700, 1500, 2600, 3700, 5000}) {
    pid_t pid = Start(victim);
    const auto t0 = std::chrono::steady_clock::now();
    // Sleep in small steps so a run that already finished is noticed.
    int status = 0;
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(delay_ms)) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (pid < 0) break;
    kill(pid, SIGKILL);
    EXPECT_EQ(Wait(pid), -SIGKILL);
    ++kills;
  }
  EXPECT_GE(kills, 2) << "the run finished too fast to be interrupted";
  ASSERT_EQ(Wait(Start(victim)), 0);
  const nlohmann::json got = Layout(base + "victim");
  EXPECT_EQ(got["full_attention_layers"], want["full_attention_layers"]);
  EXPECT_EQ(got["scores"], want["scores"]) << "gates after kills and resumes must equal an uninterrupted run's";
  EXPECT_FALSE(fs::exists(base + "victim.partial"));
}

}  // namespace
