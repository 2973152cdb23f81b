// libFuzzer target for the Kafka listener's request decoding: each input is one request frame
// body (header + body, no size prefix) handed to the Broker, which parses it for whichever API
// and version the header names and answers or refuses it. Parked requests are resumed once, as
// the event loop would. Any crash, leak, out-of-bounds read or undefined behaviour is a bug.
//
// Built with clang's -fsanitize=fuzzer,address,undefined by tests/kafka/fuzz/run.sh (CI runs it
// for a bounded time); the seed corpus is written by the same script.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "../../../bindings/kafka/src/broker.h"
#include "weft/fabric/log.h"
#include "weft/node.h"

namespace {

struct World {
  std::unique_ptr<weft::Node> node;
  std::unique_ptr<weft::kafka::detail::Broker> broker;
  World() {
    weft::set_log_level(weft::LogLevel::kError);
    weft::NodeOptions options;
    options.prefer_hugepages = false;
    options.start_maintenance_thread = false;
    options.ring_memory_budget_bytes = std::size_t{32} << 20;  // auto-created topics stay bounded
    options.max_topics = 64;
    options.default_topic.ring_capacity_bytes = std::size_t{64} << 10;
    options.default_topic.max_batch_bytes = std::size_t{16} << 10;
    weft::Result<std::unique_ptr<weft::Node>> started = weft::Node::start(options);
    if (!started.ok()) __builtin_trap();  // nothing to fuzz without a node
    node = std::move(started.value());
    (void)node->create_topic("t");
    weft::kafka::KafkaListenerOptions listener;
    listener.groups.initial_rebalance_delay_ms = 0;
    broker = std::make_unique<weft::kafka::detail::Broker>(*node, listener, 9092);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World world;
  weft::kafka::Reader reader(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  weft::kafka::detail::Request request;
  request.header = weft::kafka::read_request_header(reader);
  if (!reader.ok()) return 0;
  request.body = reader.rest();
  request.client_host = "127.0.0.1";
  request.arrived_ns = weft::monotonic_ns();
  weft::kafka::detail::Outcome outcome = world.broker->handle(request);
  if (outcome.kind == weft::kafka::detail::Outcome::Kind::kParked) {
    std::unique_ptr<weft::kafka::detail::Parked> parked = std::move(outcome.parked);
    world.node->maintain();
    // Past every deadline: produces and fetches are answered now; a group join may still wait.
    const weft::kafka::detail::Outcome resumed = world.broker->resume(*parked, request.arrived_ns + (std::int64_t{400} << 30));
    if (resumed.kind == weft::kafka::detail::Outcome::Kind::kParked) world.broker->abandon(*parked);
  }
  world.broker->tick(weft::monotonic_ns());
  return 0;
}
