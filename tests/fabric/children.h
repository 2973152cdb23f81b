// Child processes in tests: every child a test starts is stopped (SIGKILL) and reaped by its
// PID when the test ends, however it ends.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace weft::test {

// Every child a test starts, each stopped (SIGKILL) and reaped by its PID when the test ends,
// however it ends. A failed fork is a test failure, never a pid of -1 to signal.
class Children {
 public:
  Children() = default;
  Children(const Children&) = delete;
  Children& operator=(const Children&) = delete;
  ~Children() {
    for (pid_t pid : pids_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  // Runs `body` in a child process; returns its PID (or -1 after recording a failure). The
  // child never returns into gtest.
  template <class Body>
  pid_t spawn(Body body) {
    const pid_t pid = fork();
    if (pid < 0) {
      ADD_FAILURE() << "fork: " << std::strerror(errno);
      return -1;
    }
    if (pid == 0) _exit(body());
    pids_.push_back(pid);
    return pid;
  }

  // Waits for `pid` up to `timeout`; SIGKILLs it past that. Returns the exit code, -signal, or
  // kTimedOut. Forgets the pid once reaped.
  int reap(pid_t pid, std::chrono::milliseconds timeout) {
    if (pid <= 0 || std::find(pids_.begin(), pids_.end(), pid) == pids_.end()) return kNotOurs;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    int result = kTimedOut;
    for (;;) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        result = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    pids_.erase(std::find(pids_.begin(), pids_.end(), pid));
    return result;
  }

  // True (with its status) if `pid` has exited; it is then reaped and forgotten.
  bool exited(pid_t pid, int& status) {
    if (pid <= 0 || std::find(pids_.begin(), pids_.end(), pid) == pids_.end()) return false;
    if (waitpid(pid, &status, WNOHANG) != pid) return false;
    pids_.erase(std::find(pids_.begin(), pids_.end(), pid));
    return true;
  }

  static constexpr int kTimedOut = -1000;
  static constexpr int kNotOurs = -1001;

 private:
  std::vector<pid_t> pids_;
};

}  // namespace weft::test
