// SHA-256 against FIPS 180-4's examples and lengths around the padding's block boundary;
// HMAC-SHA-256 against RFC 4231's test cases.
#include "weft/fabric/hmac_sha256.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace weft::test {
namespace {

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

std::string hex(const Sha256Digest& d) {
  std::string out;
  char two[3];
  for (std::byte b : d) {
    std::snprintf(two, sizeof two, "%02x", std::to_integer<unsigned>(b));
    out += two;
  }
  return out;
}

TEST(Sha256, MatchesTheStandardsExamples) {
  EXPECT_EQ(hex(sha256(bytes_of(""))), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex(sha256(bytes_of("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(sha256(bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1'000'000, 'a');
  EXPECT_EQ(hex(sha256(bytes_of(million))), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PadsEveryLengthAroundABlocksEnd) {
  // 55 bytes leave room for the length in the last block; 56..63 need one more block.
  const std::vector<std::pair<std::size_t, std::string_view>> cases = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
  };
  for (const auto& [length, digest] : cases) EXPECT_EQ(hex(sha256(bytes_of(std::string(length, 'a')))), digest) << length << " bytes";
}

TEST(HmacSha256, MatchesRfc4231) {
  const std::string key1(20, '\x0b');
  EXPECT_EQ(hex(hmac_sha256(bytes_of(key1), bytes_of("Hi There"))), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(hmac_sha256(bytes_of("Jefe"), bytes_of("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // A key longer than the block is hashed first.
  const std::string key6(131, '\xaa');
  EXPECT_EQ(hex(hmac_sha256(bytes_of(key6), bytes_of("Test Using Larger Than Block-Size Key - Hash Key First"))),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(hex(hmac_sha256(bytes_of(""), bytes_of(""))), "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST(HmacSha256, DigestsCompareWhole) {
  const Sha256Digest a = sha256(bytes_of("a"));
  Sha256Digest b = a;
  EXPECT_TRUE(same_digest(a, b));
  for (std::size_t i : {std::size_t{0}, std::size_t{17}, std::size_t{31}}) {
    b = a;
    b[i] ^= std::byte{1};
    EXPECT_FALSE(same_digest(a, b)) << "a difference at byte " << i;
  }
}

}  // namespace
}  // namespace weft::test
