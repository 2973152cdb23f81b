# Thin wrapper over the CMake presets. `make demo` and `make test` install what is missing first.
PRESET ?= release
CMAKE_ARGS ?=
BUILD_DIR := build/$(PRESET)

.PHONY: all deps configure build demo test test-asan test-tsan bench clean

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

# Google Benchmark micro-benches (release build).
bench: build
	@for b in crc32c_bench record_batch_bench ring_bench client_bench; do $(BUILD_DIR)/bench/$$b; done

clean:
	@rm -rf build
