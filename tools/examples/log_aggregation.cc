// Log aggregation: many producers (one per host) ship log lines to one topic; one consumer
// reads every partition and tallies lines per host and level.
//
//   weft-example-log_aggregation [--socket PATH]
#include <cstdio>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "example_node.h"
#include "weft/consumer.h"
#include "weft/producer.h"

int main(int argc, char** argv) {
  example::Connection c = example::connect(argc, argv);
  const std::string topic = "logs-" + std::to_string(::getpid());
  // Every line must be counted: the consumer holds producers back rather than being lapped
  // (the default lets a fast producer overwrite what a slow reader has not read yet).
  example::check(c.client->create_topic(topic, weft::TopicSettings{{"partitions", "3"}, {"flow.control", "consumers"}}), "create topic");
  weft::TopicConsumer consumer = example::check(weft::TopicConsumer::create(c.client), "consumer");
  example::check(consumer.assign(topic, {}, weft::SeekTo::earliest()), "assign");

  constexpr int kHosts = 6;
  constexpr int kLinesPerHost = 3000;
  const char* levels[] = {"INFO", "WARN", "ERROR"};
  std::vector<std::thread> hosts;
  for (int h = 0; h < kHosts; ++h) {
    hosts.emplace_back([&, h] {
      weft::TopicProducer producer = example::check(weft::TopicProducer::create(c.client, topic), "producer");
      const std::string host = "host-" + std::to_string(h);
      for (int i = 0; i < kLinesPerHost; ++i) {
        const std::string line = std::string(levels[i % 10 == 0 ? 2 : (i % 4 == 0 ? 1 : 0)]) + " request " + std::to_string(i) + " served";
        weft::RecordInput record;
        record.key = example::bytes(host);  // a host's lines stay in order on one partition
        record.value = example::bytes(line);
        example::check(producer.send(record), "send");
      }
    });
  }

  std::map<std::string, std::map<std::string, long>> tally;
  long total = 0;
  // Bounded by time, not by polls: a poll returns as soon as it has a record, so a consumer
  // faster than the producers takes many small polls.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (long polls = 0; polls < 10'000'000 && total < kHosts * kLinesPerHost && std::chrono::steady_clock::now() < give_up; ++polls) {
    const weft::PollResult polled = example::check(consumer.poll(50), "poll");
    for (const weft::PollNotice& n : polled.notices)
      std::fprintf(stderr, "partition %u: records from offset %lld lost\n", n.partition, static_cast<long long>(n.from.value));
    for (const weft::ConsumedRecord& r : polled.records) {
      const std::string host(reinterpret_cast<const char*>(r.key->data()), r.key->size());
      const std::string line(reinterpret_cast<const char*>(r.value->data()), r.value->size());
      ++tally[host][line.substr(0, line.find(' '))];
      ++total;
    }
  }
  for (std::thread& t : hosts) t.join();
  for (const auto& [host, counts] : tally) {
    std::printf("%s:", host.c_str());
    for (const auto& [level, n] : counts) std::printf("  %s %ld", level.c_str(), n);
    std::printf("\n");
  }
  std::printf("%ld lines from %d hosts\n", total, kHosts);
  (void)c.client->delete_topic(topic);
  return total == kHosts * kLinesPerHost ? 0 : 1;
}
