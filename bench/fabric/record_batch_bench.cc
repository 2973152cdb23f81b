// Encoding and decoding RecordBatch v2: one 64-byte record, and 64 of them, beside memcpy of
// the batch's bytes.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "weft/fabric/record_batch.h"

namespace {

using weft::BatchBuilder;
using weft::BatchView;
using weft::RecordInput;

std::vector<std::byte> encode(std::size_t records, std::vector<std::byte>& out) {
  std::vector<std::byte> value(64, std::byte{1});
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 1'700'000'000'000, {}};
  BatchBuilder builder(out);
  for (std::size_t i = 0; i < records; ++i) (void)builder.append(record);
  auto bytes = builder.finish();
  return {bytes.begin(), bytes.end()};
}

void BM_MemcpyBatchBytes(benchmark::State& state) {
  std::vector<std::byte> scratch(1 << 16);
  const std::vector<std::byte> batch = encode(static_cast<std::size_t>(state.range(0)), scratch);
  std::vector<std::byte> dst(batch.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), batch.data(), batch.size());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(batch.size()));
}

void BM_EncodeBatch(benchmark::State& state) {
  const auto records = static_cast<std::size_t>(state.range(0));
  std::vector<std::byte> value(64, std::byte{1});
  std::vector<std::byte> out(1 << 16);
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 1'700'000'000'000, {}};
  std::size_t size = 0;
  for (auto _ : state) {
    BatchBuilder builder(out);
    for (std::size_t i = 0; i < records; ++i) (void)builder.append(record);
    size = builder.finish().size();
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(records));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(size));
}

void BM_EncodeSingleRecordBatch(benchmark::State& state) {
  std::vector<std::byte> value(64, std::byte{1});
  std::vector<std::byte> out(1 << 10);
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 1'700'000'000'000, {}};
  std::size_t size = 0;
  for (auto _ : state) {
    size = weft::encode_single_record_batch(out, record).size();
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(size));
}

void BM_DecodeBatch(benchmark::State& state, bool check_crc) {
  std::vector<std::byte> scratch(1 << 16);
  const std::vector<std::byte> batch = encode(static_cast<std::size_t>(state.range(0)), scratch);
  for (auto _ : state) {
    auto view = check_crc ? BatchView::parse(batch) : BatchView::parse_trusted(batch);
    std::uint64_t sum = 0;
    for (const weft::RecordView& r : *view) sum += r.value->size();
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(batch.size()));
}

void BM_ReadBatchOnePass(benchmark::State& state) {
  std::vector<std::byte> scratch(1 << 16);
  const std::vector<std::byte> batch = encode(static_cast<std::size_t>(state.range(0)), scratch);
  for (auto _ : state) {
    auto view = BatchView::parse_header(batch, false);
    weft::RecordReader reader(*view);
    weft::RecordView r;
    std::uint64_t sum = 0;
    while (reader.next(r)) sum += r.value->size();
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(batch.size()));
}

void BM_DecodeSingleRecordBatch(benchmark::State& state) {
  std::vector<std::byte> scratch(1 << 10);
  const std::vector<std::byte> batch = encode(1, scratch);
  weft::RecordView r;
  for (auto _ : state) {
    const bool ok = weft::decode_single_record_batch(batch, r);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(r.value->data());
  }
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_ReadBatchOnePass)->Arg(1)->Arg(64);
BENCHMARK(BM_DecodeSingleRecordBatch);
BENCHMARK(BM_MemcpyBatchBytes)->Arg(1)->Arg(64);
BENCHMARK(BM_EncodeBatch)->Arg(1)->Arg(64);
BENCHMARK(BM_EncodeSingleRecordBatch);
BENCHMARK_CAPTURE(BM_DecodeBatch, with_crc, true)->Arg(1)->Arg(64);
BENCHMARK_CAPTURE(BM_DecodeBatch, trusted, false)->Arg(1)->Arg(64);

}  // namespace

BENCHMARK_MAIN();
