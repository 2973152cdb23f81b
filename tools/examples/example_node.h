// Shared by the examples: an embedded node by default, or weftd with --socket PATH.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "weft/client.h"
#include "weft/node.h"

namespace example {

struct Connection {
  std::unique_ptr<weft::Node> node;  // set when embedded
  std::shared_ptr<weft::Client> client;
};

inline Connection connect(int argc, char** argv) {
  Connection c;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string_view(argv[i]) == "--socket") {
      auto client = weft::Client::connect(argv[i + 1]);
      if (!client.ok()) {
        std::fprintf(stderr, "%s\n", client.error().message.c_str());
        std::exit(1);
      }
      c.client = *client;
      return c;
    }
  }
  weft::NodeOptions options;
  options.default_topic.ring_capacity_bytes = 1u << 20;
  options.default_topic.max_batch_bytes = 64u << 10;
  auto node = weft::Node::start(options);
  if (!node.ok()) {
    std::fprintf(stderr, "%s\n", node.error().message.c_str());
    std::exit(1);
  }
  c.node = std::move(*node);
  c.client = weft::Client::embedded(*c.node);
  return c;
}

template <class T>
T check(weft::Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, r.error().message.c_str());
    std::exit(1);
  }
  return std::move(r).value();
}

inline void check(const weft::Result<void>& r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, r.error().message.c_str());
    std::exit(1);
  }
}

inline std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

}  // namespace example
