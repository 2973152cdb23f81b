// CRC-32C: each path the processor has (the chosen one, then each by name), beside memcpy of
// the same bytes; and HMAC-SHA-256 of a replication handshake's proof input, beside them.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "weft/fabric/crc32c.h"
#include "weft/fabric/hmac_sha256.h"

namespace {

void BM_Memcpy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<char> src(n, 7), dst(n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

void BM_Crc32cHardware(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<char> buf(n, 7);
  for (auto _ : state) benchmark::DoNotOptimize(weft::crc32c_extend(0, buf.data(), n));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
  state.SetLabel(weft::crc32c_path_name(weft::crc32c_chosen_path()));
}

void BM_Crc32cPath(benchmark::State& state, weft::Crc32cPath path) {
  if (!weft::crc32c_path_available(path)) {
    state.SkipWithError("this processor lacks the path");
    return;
  }
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<char> buf(n, 7);
  for (auto _ : state) benchmark::DoNotOptimize(weft::crc32c_extend_on(path, 0, buf.data(), n));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

void BM_Crc32cPortable(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<char> buf(n, 7);
  for (auto _ : state) benchmark::DoNotOptimize(weft::crc32c_extend_portable(0, buf.data(), n));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

// One proof of a link's handshake (a label, two 16-byte nonces and a node id: 49 bytes), under
// a 32-byte secret; each side of a handshake computes two.
void BM_HmacSha256(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::vector<std::byte> key(32, std::byte{0x6b});
  std::vector<std::byte> message(n, std::byte{0x6d});
  for (auto _ : state) {
    message[0] = static_cast<std::byte>(state.iterations());
    benchmark::DoNotOptimize(weft::hmac_sha256(key, message));
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

BENCHMARK(BM_HmacSha256)->Arg(49);
BENCHMARK(BM_Memcpy)->Arg(80)->Arg(113)->Arg(512)->Arg(4096)->Arg(65536);
// 113 bytes: what a one-record batch of a 64-byte value covers (short lanes); 512: a few records.
BENCHMARK(BM_Crc32cHardware)->Arg(80)->Arg(113)->Arg(512)->Arg(4096)->Arg(65536);
BENCHMARK_CAPTURE(BM_Crc32cPath, vpclmulqdq, weft::Crc32cPath::kFolding512)->Arg(256)->Arg(384)->Arg(512)->Arg(4096)->Arg(65536);
BENCHMARK_CAPTURE(BM_Crc32cPath, sse4_2, weft::Crc32cPath::kInstruction)->Arg(256)->Arg(384)->Arg(512)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Crc32cPortable)->Arg(80)->Arg(113)->Arg(512)->Arg(4096)->Arg(65536);

}  // namespace

BENCHMARK_MAIN();
