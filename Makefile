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

# The main job: the ring end to end across two processes, with same-run baselines.
demo: build
	@$(BUILD_DIR)/bench/weft-ring-bench

test: build
	@ctest --preset $(PRESET)

test-asan:
	@$(MAKE) --no-print-directory test PRESET=asan

test-tsan:
	@$(MAKE) --no-print-directory test PRESET=tsan

# Google Benchmark micro-benches (release build).
bench: build
	@for b in crc32c_bench record_batch_bench ring_bench; do $(BUILD_DIR)/bench/$$b; done

clean:
	@rm -rf build
