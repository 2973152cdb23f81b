# Thin wrapper over the CMake presets. `make demo` and `make test` install what is missing first.
PRESET ?= release
CMAKE_ARGS ?=
BUILD_DIR := build/$(PRESET)

.PHONY: all deps configure build demo test test-asan test-tsan fuzz bench clean

all: build

deps:
	@scripts/setup.sh

configure: deps
	@cmake --preset $(PRESET) $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build --preset $(PRESET)

# The main job: weft perf on an embedded node (a producer and a consumer process through the
# client API), with same-run baselines.
demo: build
	@$(BUILD_DIR)/tools/weft perf

test: build
	@ctest --preset $(PRESET)

test-asan:
	@$(MAKE) --no-print-directory test PRESET=asan

test-tsan:
	@$(MAKE) --no-print-directory test PRESET=tsan

# The fuzzers (clang, libFuzzer, ASan+UBSan), each for FUZZ_SECONDS from a seed corpus of
# well-formed inputs: the Kafka request decoder, record batches with their codecs, segment files
# as a restarted node finds them, and its checkpoint files (group offsets, epoch histories).
# The corpora they grow stay in build/fuzz/*corpus.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
fuzz:
	@WEFT_EXTRA_PACKAGES="clang libclang-rt-14-dev" scripts/setup.sh
	@cmake --preset fuzz $(CMAKE_ARGS) >/dev/null
	@cmake --build --preset fuzz
	@mkdir -p build/fuzz/corpus && /usr/bin/python3 tests/kafka/fuzz/seeds.py build/fuzz/seeds
	@build/fuzz/tests/kafka/fuzz/kafka_request_fuzzer $(FUZZ_FLAGS) build/fuzz/corpus build/fuzz/seeds
	@mkdir -p build/fuzz/batch-corpus build/fuzz/batch-seeds && build/fuzz/tests/fabric/fuzz/record_batch_fuzz_seeds build/fuzz/batch-seeds
	@build/fuzz/tests/fabric/fuzz/record_batch_fuzzer $(FUZZ_FLAGS) build/fuzz/batch-corpus build/fuzz/batch-seeds
	@mkdir -p build/fuzz/segment-corpus build/fuzz/segment-seeds && build/fuzz/tests/storage/fuzz/segment_fuzz_seeds build/fuzz/segment-seeds
	@build/fuzz/tests/storage/fuzz/segment_fuzzer $(FUZZ_FLAGS) build/fuzz/segment-corpus build/fuzz/segment-seeds
	@mkdir -p build/fuzz/checkpoint-corpus build/fuzz/checkpoint-seeds && build/fuzz/tests/storage/fuzz/checkpoint_fuzz_seeds build/fuzz/checkpoint-seeds
	@build/fuzz/tests/storage/fuzz/checkpoint_fuzzer $(FUZZ_FLAGS) build/fuzz/checkpoint-corpus build/fuzz/checkpoint-seeds

# Google Benchmark micro-benches (release build).
bench: build
	@for b in crc32c_bench record_batch_bench ring_bench client_bench; do $(BUILD_DIR)/bench/$$b; done

clean:
	@rm -rf build
