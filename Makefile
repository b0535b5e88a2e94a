# libpcpu - the two commands of README.md, and their parts.
#
#   make demo    build, then run the short tour (prints a table)
#   make check   build and run every test: release (and valgrind memcheck),
#                ASan+UBSan, ThreadSanitizer, the fuzzers, an aarch64 build
#   make check-model-long   the model-based test (tests/test_model.c) with
#                many seeds and steps for a few minutes (not in `check`)
#
# Both install the Debian packages they need first (scripts/deps.sh).

JOBS      ?= 2
BUILD     ?= build
FUZZ_SECS ?= 20
CMAKE     := cmake
CTEST     := ctest --output-on-failure -j$(JOBS)

.PHONY: all demo check deps deps-check build build-asan build-tsan \
	check-release check-valgrind check-asan check-tsan check-fuzz \
	check-aarch64 check-install check-model-long bench install clean

all: build

deps:
	@scripts/deps.sh build

deps-check:
	@scripts/deps.sh check

$(BUILD)/release/Makefile: | deps
	$(CMAKE) -S . -B $(BUILD)/release -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DPCPU_DEBUG_LEVEL=1 -DPCPU_VALGRIND=ON >/dev/null

build: $(BUILD)/release/Makefile
	$(CMAKE) --build $(BUILD)/release -j$(JOBS)

demo: build
	$(BUILD)/release/pcpu-demo

bench: build
	$(BUILD)/release/pcpu-bench all

build-asan: deps
	$(CMAKE) -S . -B $(BUILD)/asan -DCMAKE_BUILD_TYPE=Debug \
		-DPCPU_SANITIZE=address -DPCPU_DEBUG_LEVEL=2 \
		-DPCPU_BUILD_BENCH=OFF >/dev/null
	$(CMAKE) --build $(BUILD)/asan -j$(JOBS)

build-tsan: deps
	$(CMAKE) -S . -B $(BUILD)/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DPCPU_SANITIZE=thread -DPCPU_DEBUG_LEVEL=1 \
		-DPCPU_BUILD_BENCH=OFF >/dev/null
	$(CMAKE) --build $(BUILD)/tsan -j$(JOBS)

check-release: build
	cd $(BUILD)/release && $(CTEST) -LE valgrind

check-valgrind: build
	cd $(BUILD)/release && $(CTEST) -L valgrind

check-asan: build-asan
	cd $(BUILD)/asan && ASAN_OPTIONS=detect_leaks=1 $(CTEST)

check-tsan: build-tsan
	cd $(BUILD)/tsan && TSAN_OPTIONS=halt_on_error=1 $(CTEST)

# The model-based differential test, long: every mode, a new seed after
# another, 20000 operations each, for MODEL_SECS seconds; a failure is
# shrunk for up to a minute.  PCPU_MODEL_STEPS, PCPU_MODEL_SEEDS,
# PCPU_MODEL_SEED, PCPU_MODEL_MODES adjust it (tests/test_model.c).
MODEL_SECS ?= 240
check-model-long: build
	PCPU_MODEL_SECS=$(MODEL_SECS) $(BUILD)/release/test_model --long

# libFuzzer targets (clang), each run for FUZZ_SECS seconds.
check-fuzz: deps-check
	@mkdir -p $(BUILD)/fuzz
	@for f in tests/fuzz/fuzz_*.c; do \
		n=$$(basename $$f .c); \
		clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined \
			-Iinclude -Isrc $$f src/*.c -lurcu-memb -lpthread \
			-o $(BUILD)/fuzz/$$n || exit 1; \
		echo "fuzz: $$n for $(FUZZ_SECS)s"; \
		$(BUILD)/fuzz/$$n -max_total_time=$(FUZZ_SECS) \
			-print_final_stats=0 2>$(BUILD)/fuzz/$$n.log || \
			{ tail -40 $(BUILD)/fuzz/$$n.log; exit 1; }; \
	done

# The rseq critical sections for aarch64 must at least compile.
check-aarch64: deps-check
	@mkdir -p $(BUILD)/aarch64
	@for f in src/*.c tests/test_ops.c tests/test_this_cpu.c; do \
		aarch64-linux-gnu-gcc -std=gnu11 -O2 -Wall -Wextra -Werror \
			-Wno-unused-parameter -Iinclude -Isrc -Itests -c $$f \
			-o $(BUILD)/aarch64/$$(basename $$f .c).o || exit 1; \
	done
	@aarch64-linux-gnu-gcc -std=gnu11 -O2 -Iinclude -Isrc \
		tests/link/far_text.c src/*.c -lpthread \
		-o $(BUILD)/aarch64/far_text
	@echo "aarch64: every source compiles; a 4 MiB program links"

# Install into a scratch prefix and build a consumer with pkg-config and
# with find_package(pcpu).
check-install: build
	@rm -rf $(BUILD)/prefix $(BUILD)/consumer
	$(CMAKE) --install $(BUILD)/release --prefix $(CURDIR)/$(BUILD)/prefix >/dev/null
	PKG_CONFIG_PATH=$(CURDIR)/$(BUILD)/prefix/lib/pkgconfig; export PKG_CONFIG_PATH; \
	cc tests/install/consumer.c $$(pkg-config --cflags --libs libpcpu) \
		-Wl,-rpath,$(CURDIR)/$(BUILD)/prefix/lib -o $(BUILD)/consumer-pc && \
		$(BUILD)/consumer-pc
	$(CMAKE) -S tests/install -B $(BUILD)/consumer \
		-DCMAKE_PREFIX_PATH=$(CURDIR)/$(BUILD)/prefix >/dev/null
	$(CMAKE) --build $(BUILD)/consumer >/dev/null
	$(BUILD)/consumer/consumer

check: deps-check
	$(MAKE) check-aarch64
	$(MAKE) check-install
	$(MAKE) check-release
	$(MAKE) check-asan
	$(MAKE) check-tsan
	$(MAKE) check-valgrind
	$(MAKE) check-fuzz
	@echo "make check: all suites passed"

install: build
	$(CMAKE) --install $(BUILD)/release

clean:
	rm -rf $(BUILD)
