// Shared helpers for node, client and local-server tests: byte views of strings, a temporary
// directory, and a bounded drain of a TopicConsumer into owned copies.
#pragma once

#include <gtest/gtest.h>

#include "../temp_dir.h"
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/node.h"
#include "weft/producer.h"

namespace weft::test {

inline std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span<const char>(s.data(), s.size())); }

inline std::string text_of(const OptionalBytes& b) {
  return b ? std::string(reinterpret_cast<const char*>(b->data()), b->size()) : std::string("<null>");
}

// Node options for tests: no hugepages (tests must not drain the machine's pool), small rings.
inline NodeOptions test_node_options(bool maintenance_thread) {
  NodeOptions options;
  options.prefer_hugepages = false;
  options.start_maintenance_thread = maintenance_thread;
  options.default_topic.ring_capacity_bytes = std::size_t{1} << 20;
  options.default_topic.max_batch_bytes = std::size_t{64} << 10;
  options.ring_memory_budget_bytes = std::size_t{512} << 20;
  return options;
}

// A record as consumed, copied out of the ring.
struct Got {
  std::uint32_t partition = 0;
  std::int64_t offset = 0;
  std::int64_t timestamp_ms = 0;
  std::string key;
  std::string value;
};

struct Drained {
  std::vector<Got> records;
  std::vector<PollNotice> notices;
  int polls = 0;
};

// Polls until `want` records arrived, or `deadline` passed, or (want == 0) a poll came back empty.
inline Drained drain(TopicConsumer& consumer, std::size_t want, std::chrono::milliseconds deadline = std::chrono::seconds(10)) {
  Drained out;
  const auto end = std::chrono::steady_clock::now() + deadline;
  for (int i = 0; i < 1'000'000 && std::chrono::steady_clock::now() < end; ++i) {
    Result<PollResult> polled = consumer.poll(want == 0 ? 0 : 20);
    EXPECT_TRUE(polled.ok()) << polled.error().message;
    if (!polled.ok()) break;
    ++out.polls;
    for (const ConsumedRecord& r : polled->records)
      out.records.push_back(Got{r.partition, r.offset.value, r.timestamp_ms, text_of(r.key), text_of(r.value)});
    for (const PollNotice& n : polled->notices) out.notices.push_back(n);
    if (want == 0 && polled->records.empty() && polled->notices.empty()) break;
    if (want != 0 && out.records.size() >= want) break;
  }
  return out;
}

}  // namespace weft::test
