// Holds the opening of logs of topics named "slow..." until the test lets them go, as a slow
// disk (or a cluster's store) would hold their creation: for tests that a topic made slowly
// holds nothing else. Wraps a node's log opener, which keeps it alive.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>

#include "weft/node.h"

namespace weft::test {

struct HeldLogs {
  std::mutex mutex;
  std::condition_variable changed;
  int entered = 0;
  bool open = false;

  static std::function<OpenPartitionLog(OpenPartitionLog)> wrapper(std::shared_ptr<HeldLogs> held) {
    return [held](OpenPartitionLog inner) -> OpenPartitionLog {
      return [held, inner](std::string_view topic, std::uint32_t partition, const TopicConfig& config) {
        if (topic.starts_with("slow")) {
          std::unique_lock lock(held->mutex);
          ++held->entered;
          held->changed.notify_all();
          held->changed.wait(lock, [&] { return held->open; });
        }
        return inner(topic, partition, config);
      };
    };
  }
  // Bounded: ten seconds.
  bool wait_entered(int n) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, std::chrono::seconds(10), [&] { return entered >= n; });
  }
  void let_go() {
    {
      std::lock_guard lock(mutex);
      open = true;
    }
    changed.notify_all();
  }
  // Whatever fails in a test, its held creations end before the node is stopped.
  struct LetGoAtEnd {
    HeldLogs& held;
    ~LetGoAtEnd() { held.let_go(); }
  };
};

}  // namespace weft::test
