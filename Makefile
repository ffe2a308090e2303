# ha-sidecar entry points. `make run` (the demo) needs only cargo; `make test` (the whole suite)
# works on a fresh Debian machine with the Rust toolchain and calls `make deps` first.

CARGO      ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
BIN        := $(TARGET_DIR)/release/ha-sidecar
# System packages the tests use (real load balancers, NFS pieces, promtool); installed with apt-get when
# missing and running as root, otherwise the exact command is printed.
TEST_PACKAGES  ?= haproxy nginx libnginx-mod-stream chromium systemd binutils nfs-ganesha nfs-ganesha-vfs rpcbind gvfs-fuse gvfs-backends libglib2.0-bin dbus iproute2 util-linux prometheus
BENCH_PACKAGES ?= redis-server

# QEMU, Debian's kernel and an initramfs for the kernel-NFS VM test (integration/vm/prepare.sh).
NFS_VM_KIT ?= $(TARGET_DIR)/nfs-vm

export HA_SIDECAR_BIN := $(BIN)
export HA_NFS_VM_KIT := $(NFS_VM_KIT)

.PHONY: all deps deps-bench build run test lint unit integration bench bench-quick clean fuzz deb

all: build

deps:
	@command -v $(CARGO) >/dev/null || { echo "make deps: cargo not found: install the Rust toolchain (rustup)"; exit 1; }
	@$(CURDIR)/.ci/apt-install $(TEST_PACKAGES)
	@$(CURDIR)/integration/vm/prepare.sh $(NFS_VM_KIT)
	$(CARGO) fetch --locked

deps-bench: deps
	@$(CURDIR)/.ci/apt-install $(BENCH_PACKAGES)

build: deps
	$(CARGO) build --release --locked --workspace

# The demo needs only cargo: no system package, no root, no VM kit (unlike `make test`).
run:
	@command -v $(CARGO) >/dev/null || { echo "make run: cargo not found: install the Rust toolchain (rustup)"; exit 1; }
	$(CARGO) build --release --locked -p ha-sidecar
	$(BIN) demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

# One release build serves the binary and every test binary. Tests that assert a rate
# (RATE_TESTS) run alone afterwards: on two cores, a test running beside them would set the
# figure, not the code.
RATE_TESTS := events::hundred_tailers_one_slow_none_held_back
# The test of the built package runs under `make deb` (it needs the package); `make test` keeps
# the cheap checks of the unit and the maintainer scripts.
DEB_TESTS := packaging::the_packaged_binary_runs_from_the_extracted_package

test: deps lint build
	$(CARGO) test --release --locked --workspace -- --skip $(RATE_TESTS) --skip $(DEB_TESTS)
	$(CARGO) test --release --locked -p integration -- --exact $(RATE_TESTS)

unit: build
	$(CARGO) test --release --locked --workspace --lib

integration: build
	$(CARGO) test --release --locked -p integration -- --skip $(RATE_TESTS) --skip $(DEB_TESTS)
	$(CARGO) test --release --locked -p integration -- --exact $(RATE_TESTS)

clean:
	$(CARGO) clean

# The Debian package: target/deb/ha-sidecar_<version>_<arch>.deb (stripped binary, systemd unit,
# default config, secret made at install) and its split-off debug info beside it; then the test
# that extracts it and runs the packaged binary. Needs dpkg-deb, objcopy and systemd-analyze.
DEB_DIR ?= $(TARGET_DIR)/deb
deb:
	$(CARGO) build --release --locked -p ha-sidecar
	deb=$$($(CURDIR)/packaging/deb/build-deb.sh $(BIN) $(DEB_DIR)) && echo "built $$deb" && \
	  HA_DEB=$$deb $(CARGO) test --release --locked -p integration --test integration -- --exact $(DEB_TESTS)

# Fuzzing is not a test (nightly, minutes per target): each target of fuzz/ runs for
# FUZZ_SECONDS. The same parsers have property tests in `make test` (sidecar/src/parsers.rs).
FUZZ_SECONDS ?= 120
FUZZ_TARGETS := query cursor duration_date config wire_batch segments sse
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

# Benchmarks are not tests: they measure, in release mode, and write bench/results/.
bench: deps-bench build
	$(CARGO) build --release --locked -p ha-bench
	$(TARGET_DIR)/release/ha-bench --out bench/results

bench-quick: deps-bench build
	$(CARGO) build --release --locked -p ha-bench
	$(TARGET_DIR)/release/ha-bench --quick --out bench/results
