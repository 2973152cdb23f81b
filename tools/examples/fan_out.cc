// Fan-out: one stream read at once by a real-time consumer (tails the ring, parked between
// records) and a slower consumer (a batch job that reads in bursts). The slow reader never slows
// the producer: when the ring laps it, it is told exactly which offsets it missed (served from
// the segment files once the node persists them).
//
//   weft-example-fan_out [--socket PATH]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <unistd.h>

#include "example_node.h"
#include "weft/consumer.h"
#include "weft/producer.h"

int main(int argc, char** argv) {
  example::Connection c = example::connect(argc, argv);
  const std::string topic = "ticks-" + std::to_string(::getpid());
  example::check(c.client->create_topic(topic, weft::TopicSettings{{"partitions", "1"}, {"ring.capacity.bytes", "262144"}, {"max.batch.bytes", "16384"}}),
                 "create topic");
  constexpr long kRecords = 200'000;
  std::atomic<bool> ready{false};

  std::thread realtime([&] {
    weft::ConsumerOptions options;
    options.wait = weft::WaitKind::kPark;
    weft::TopicConsumer consumer = example::check(weft::TopicConsumer::create(c.client, options), "consumer");
    example::check(consumer.assign(topic, {}, weft::SeekTo::earliest()), "assign");
    ready.store(true);
    long received = 0, lapped = 0;
    for (int polls = 0; polls < 100'000 && received + lapped < kRecords; ++polls) {
      const weft::PollResult polled = example::check(consumer.poll(100), "poll");
      received += static_cast<long>(polled.records.size());
      for (const weft::PollNotice& n : polled.notices) lapped += n.to.value - n.from.value;
    }
    std::printf("real-time consumer: %ld records, %ld missed\n", received, lapped);
  });
  std::thread batch([&] {
    weft::TopicConsumer consumer = example::check(weft::TopicConsumer::create(c.client), "consumer");
    example::check(consumer.assign(topic, {}, weft::SeekTo::earliest()), "assign");
    long received = 0, lapped = 0;
    for (int polls = 0; polls < 100'000 && received + lapped < kRecords; ++polls) {
      const weft::PollResult polled = example::check(consumer.poll(100), "poll");
      received += static_cast<long>(polled.records.size());
      for (const weft::PollNotice& n : polled.notices) {
        lapped += n.to.value - n.from.value;
        std::printf("batch consumer: lapped, offsets %lld..%lld must come from the log\n", static_cast<long long>(n.from.value),
                    static_cast<long long>(n.to.value - 1));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a slow job: work per poll
    }
    std::printf("batch consumer:     %ld records, %ld missed\n", received, lapped);
  });

  while (!ready.load()) std::this_thread::yield();
  weft::TopicProducer producer = example::check(weft::TopicProducer::create(c.client, topic), "producer");
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < kRecords; ++i) {
    const std::string value = "tick " + std::to_string(i);
    weft::RecordInput record;
    record.value = example::bytes(value);
    example::check(producer.send(record), "send");
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("producer: %ld records in %.3f s, never waiting on the consumers\n", kRecords, secs);
  realtime.join();
  batch.join();
  (void)c.client->delete_topic(topic);
  return 0;
}
