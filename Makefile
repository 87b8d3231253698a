# overlayer: run as root on Debian (bookworm or later).
#   make test     - formatting, lints, unit + case + property tests (kernel side needs root)
#   make vm-test  - the harness inside QEMU on Debian kernels 5.10, 6.1, 6.12 and 7.2, plus the host kernel
#   make bench    - speed against GNU tar (see README)

SHELL := /bin/bash
CARGO ?= cargo
TEST_DEBS := attr time
VM_DEBS := qemu-system-x86 busybox-static cpio attr xz-utils zstd

.PHONY: all build test test-deps vm-test vm-deps fmt lint replay prop bench clean fuzz

all: build

build:
	$(CARGO) build --release

# Installs what the tests need on a fresh Debian machine (idempotent).
test-deps:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@grep -qw overlay /proc/filesystems || modprobe overlay || echo "note: overlay module unavailable; kernel-side tests will be reported as skipped"

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: test-deps fmt lint
	$(CARGO) test --workspace --release
	$(CARGO) run --release -q -p overlayer-harness --bin overlayer -- replay cases
	$(CARGO) run --release -q -p overlayer-harness --bin overlayer -- prop --cases 2000 --seed 1
	$(CARGO) run --release -q -p overlayer-harness --bin overlayer -- prop --mode damaged --cases 2000 --seed 1

replay: build
	./target/release/overlayer replay cases

prop: build
	./target/release/overlayer prop --cases 10000 --seed $${SEED:-0}

vm-test:
	./vm/vm-test.sh

bench:
	./bench/bench.sh

# libFuzzer via cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it
# pass its -Z flags): seeds from cases/, then each target for FUZZ_SECONDS
# (default 60). Needs root (private mount namespace, tmpfs, chroot). See fuzz/README.md.
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) run --release -q --bin seed-corpus
	@for t in layer_bytes stack; do \
		mkdir -p fuzz/corpus/$$t fuzz/artifacts/$$t; \
		echo "fuzzing $$t for $${FUZZ_SECONDS:-60}s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz -O $$t fuzz/corpus/$$t -- \
			-max_total_time=$${FUZZ_SECONDS:-60} -timeout=10 -print_final_stats=1 || exit 1; \
	done

clean:
	$(CARGO) clean
