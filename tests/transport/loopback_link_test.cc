#include "weft/transport/loopback.h"

#include "link_conformance.h"

namespace weft::test {
namespace {

TransportCase loopback_case() {
  auto network = make_loopback_network();
  return TransportCase{"Loopback", [network] { return make_loopback_transport(network); }, ""};
}

INSTANTIATE_TEST_SUITE_P(Loopback, LinkConformance, testing::Values(loopback_case()), case_name);

TEST(LoopbackTransport, NamesAreAddresses) {
  auto network = make_loopback_network();
  auto a = make_loopback_transport(network);
  auto b = make_loopback_transport(network);
  auto listener = a->listen("node-1");
  ASSERT_TRUE(listener.ok());
  EXPECT_EQ(listener.value()->address(), "node-1");
  EXPECT_EQ(b->listen("node-1").error().code, Errc::kIo) << "one listener per name";
  EXPECT_EQ(b->connect("node-2", 100).error().code, Errc::kUnavailable);
  listener.value().reset();
  EXPECT_EQ(b->connect("node-1", 100).error().code, Errc::kUnavailable) << "gone with its listener";
  EXPECT_TRUE(b->listen("node-1").ok()) << "free again";
}

}  // namespace
}  // namespace weft::test
