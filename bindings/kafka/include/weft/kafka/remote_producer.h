// The client side of the Kafka protocol that the C++ client library needs: a blocking connection
// to a Kafka listener, and a RemoteProducer (weft/producer.h) that appends batches at a
// partition's leader on another node with Produce v7, so a TopicProducer on a follower's host
// follows the leader:
//
//   weft::ProducerOptions options;
//   options.remote = weft::kafka::make_remote_producer();
//   auto producer = weft::TopicProducer::create(client, "clicks", options);
//
// Thread contract: a WireConnection is used by one thread at a time; a RemoteProducer may be
// shared (it serialises its calls).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "weft/fabric/result.h"
#include "weft/producer.h"

namespace weft::kafka {

class WireConnection {
 public:
  // Connects to HOST:PORT within `timeout_ms`, with Nagle off.
  static Result<WireConnection> open(std::string_view address, int timeout_ms);
  WireConnection(WireConnection&& other) noexcept;
  WireConnection& operator=(WireConnection&& other) noexcept;
  ~WireConnection();

  Result<void> send_all(std::string_view bytes);
  // One response frame, without its 4-byte size; kUnavailable when none whole arrives in time.
  Result<std::string> read_frame(int timeout_ms, std::size_t max_bytes = std::size_t{256} << 20);
  int fd() const noexcept { return fd_; }

 private:
  explicit WireConnection(int fd) noexcept : fd_(fd) {}
  int fd_ = -1;
};

// A request frame: size, the v1 request header (key, version, correlation id, client id), body.
std::string request_frame(std::int16_t api_key, std::int16_t api_version, std::int32_t correlation_id, std::string_view client_id,
                          std::string_view body);

std::shared_ptr<RemoteProducer> make_remote_producer(std::string client_id = "weft-cpp", int connect_timeout_ms = 2'000);

}  // namespace weft::kafka
