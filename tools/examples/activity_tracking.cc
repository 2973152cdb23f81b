// Website activity tracking: many producers (web servers) publish events to one topic per
// event type, keyed by user so each user's events stay in order on one partition; a consumer
// per topic counts what arrives.
//
//   weft-example-activity_tracking [--socket PATH]
#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "example_node.h"
#include "weft/consumer.h"
#include "weft/producer.h"

int main(int argc, char** argv) {
  example::Connection c = example::connect(argc, argv);
  const std::array<std::string, 3> types{"page-views", "clicks", "searches"};
  const std::string run = std::to_string(::getpid());
  std::vector<weft::TopicConsumer> consumers;
  for (const std::string& type : types) {
    const std::string topic = "activity-" + type + "-" + run;
    example::check(c.client->create_topic(topic, 4), "create topic");
    weft::TopicConsumer consumer = example::check(weft::TopicConsumer::create(c.client), "consumer");
    example::check(consumer.assign(topic, {}, weft::SeekTo::earliest()), "assign");
    consumers.push_back(std::move(consumer));
  }

  constexpr int kServers = 4;
  constexpr int kEventsPerServer = 5000;
  std::vector<std::thread> servers;
  for (int s = 0; s < kServers; ++s) {
    servers.emplace_back([&, s] {
      // Each web server has its own producer per topic (producers are per thread).
      std::vector<weft::TopicProducer> producers;
      for (const std::string& type : types)
        producers.push_back(example::check(weft::TopicProducer::create(c.client, "activity-" + type + "-" + run), "producer"));
      for (int i = 0; i < kEventsPerServer; ++i) {
        const std::string user = "user-" + std::to_string((s * 7919 + i) % 1000);
        const std::string event = "{\"server\":" + std::to_string(s) + ",\"seq\":" + std::to_string(i) + "}";
        weft::RecordInput record;
        record.key = example::bytes(user);
        record.value = example::bytes(event);
        record.timestamp_ms = 1'700'000'000'000 + i;
        example::check(producers[static_cast<std::size_t>(i % 3)].send(record), "send");
      }
    });
  }
  for (std::thread& t : servers) t.join();

  const int expected_per_type[3] = {kServers * ((kEventsPerServer + 2) / 3), kServers * ((kEventsPerServer + 1) / 3),
                                    kServers * (kEventsPerServer / 3)};
  for (std::size_t t = 0; t < types.size(); ++t) {
    long received = 0;
    // Bounded by time, not by polls: a poll returns as soon as it has a record.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (long polls = 0; polls < 10'000'000 && received < expected_per_type[t] && std::chrono::steady_clock::now() < give_up; ++polls)
      received += static_cast<long>(example::check(consumers[t].poll(50), "poll").records.size());
    std::printf("%-11s %6ld events (expected %d)\n", types[t].c_str(), received, expected_per_type[t]);
    (void)c.client->delete_topic("activity-" + types[t] + "-" + run);
    if (received != expected_per_type[t]) return 1;
  }
  return 0;
}
