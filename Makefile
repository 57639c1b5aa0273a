# bash with pipefail: a failing step piped into tee (make bench) fails the target.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

GO ?= go
REDIS_ADDR ?= 127.0.0.1:6379
CLUSTER_ADDRS ?= 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002

TEST_ENV = CACHEASIDE_REDIS_ADDR=$(REDIS_ADDR) CACHEASIDE_CLUSTER_ADDRS=$(CLUSTER_ADDRS)

.PHONY: test vet fmt cover cluster cluster-stop redis demo bench verify soak fuzz fuzz-short lint progress admin-browser admin-screenshot

# Fuzz targets, as package:Target; each runs alone (go test takes one -fuzz target at a time).
# make test runs their seed corpora as plain tests; make fuzz-short and make fuzz mutate.
FUZZ_TARGETS = ./internal/envelope:FuzzEnvelope ./internal/glob:FuzzMatch .:FuzzDecompress \
	.:FuzzOpen .:FuzzDecodeJSON .:FuzzDecodeMsgpack .:FuzzDecodeProto .:FuzzDecodeRaw
FUZZTIME ?= 3s

# progress (internal/cmd/progress) runs a step of make test and prints a line at least every
# 20 s: each package as it ends, each test that took 2 s or more, each linearizability
# scenario, and in silences what is compiling or running. A failing test prints all its output.
# Tools live outside the clone, so that every clone on a machine (CI clones afresh) shares them.
TOOLS ?= $(HOME)/.cache/cacheaside-tools
PROGRESS := $(TOOLS)/progress

progress:
	@mkdir -p $(TOOLS)
	@$(GO) build -o $(PROGRESS) ./internal/cmd/progress

# make test: gofmt and the tests of the library (-race, -short: the CI sizes; make verify runs
# the full sizes), of examples/ and of bench/. README: How we test, for the time it takes.
# What keeps it under 4 minutes on 2 cores (a fresh clone recompiles the library's packages):
# - The root package's tests are most of the time and mostly wait (loads, gaps, faults): its
#   race test binary is built once (go test -c) while the other packages compile and run, then
#   run as two processes at once, split by ROOT_SHARD: the tests it matches (-test.run) and
#   all the others (-test.skip, the same pattern), so every test runs exactly once. Tests
#   share nothing across processes (random key prefixes, their own listeners).
# - examples/ and bench/ run beside the root package's tests, not after them.
# - -vet=off: go test's subset of go vet is the critical path's first step on every package;
#   make lint, which CI (.ci/run) runs before make test, runs all of go vet and more.
# - -race stays on every package of the library: the root package and outbox are what it is
#   for, and the others are compiled beside the root package, off the critical path.
MODULE := github.com/cacheaside/cacheaside
ROOT_SHARD ?= ^(TestLinearizability|TestLocal|TestEarlyRefresh|TestSoak|TestWarmLarge)
TEST_FLAGS = -race -short -count=1 -vet=off
test: redis cluster progress
	@echo "== make test: gofmt, then the library's go test $(TEST_FLAGS) (root package in two processes), examples/ and bench/ beside it; each line below is progress; make lint runs go vet and the linters"
	@echo "== load average at start: $$(cut -d' ' -f1-3 /proc/loadavg)"
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted:"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; start=$$(date +%s); \
	others=$$($(GO) list ./... | grep -vx '$(MODULE)') || exit 1; \
	export $(TEST_ENV) CACHEASIDE_SOAK=$(TEST_SOAK) CACHEASIDE_LINZ_SUMMARY=$$tmp/linz; \
	( status=0; \
	  echo "== go test $(TEST_FLAGS) -timeout 8m (every package but the root one)"; \
	  $(PROGRESS) -json "other packages" -- $(GO) test $(TEST_FLAGS) -timeout 8m -json $$others || status=1; \
	  for m in examples bench; do \
		[ -f $$m/go.mod ] || continue; \
		echo "== cd $$m && $(GO) test -count=1 ./..."; \
		(cd $$m && $(PROGRESS) -json "$$m: go test" -- $(GO) test -count=1 -json ./...) || status=1; \
	  done; exit $$status ) & others_pid=$$!; \
	( echo "== go test $(TEST_FLAGS) -c . (the root package's race test binary)"; \
	  $(PROGRESS) "building the root package's tests" -- $(GO) test $(TEST_FLAGS) -c -o $$tmp/root.test . || exit 1; \
	  run="$(GO) tool test2json -t -p $(MODULE) $$tmp/root.test -test.v=test2json -test.paniconexit0 -test.short -test.count=1 -test.timeout=8m"; \
	  echo "== root package, two processes: -test.run '$(ROOT_SHARD)' and -test.skip '$(ROOT_SHARD)'"; \
	  $(PROGRESS) -json ". (1 of 2)" -- $$run -test.run '$(ROOT_SHARD)' & a=$$!; \
	  $(PROGRESS) -json ". (2 of 2)" -- $$run -test.skip '$(ROOT_SHARD)' & b=$$!; \
	  status=0; wait $$a || status=1; wait $$b || status=1; exit $$status ) & root_pid=$$!; \
	status=0; wait $$root_pid || status=1; wait $$others_pid || status=1; \
	echo "== Linearizability checks, one line per scenario and store (README: How we test):"; \
	cat $$tmp/linz 2>/dev/null; \
	echo "== load average at end: $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	if [ $$status -ne 0 ]; then echo "== make test FAILED after $$(( $$(date +%s) - start )) s (see FAIL above)"; exit 1; fi; \
	echo "== make test passed: go test steps took $$(( $$(date +%s) - start )) s"

# A short run of every fuzz target, 3 s each after an instrumented build (the whole step took
# 247 s on 2 vCPUs, hence not in make test); new failures land in testdata/fuzz.
fuzz-short:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "$(GO) test -run '^$$' -fuzz '^$$name\$$' -fuzztime $(FUZZTIME) $$pkg"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# Longer fuzzing: 60 seconds per target.
fuzz:
	$(MAKE) fuzz-short FUZZTIME=60s

# verify runs the linearizability scenarios (and the broken-build check) six times larger
# than CI does, the soak for VERIFY_SOAK, and the tests make test shrinks with -short at
# their full size (Warm of 100,000 keys), under -race: about six minutes. Each scenario
# prints its line.
VERIFY_SCALE ?= 6
VERIFY_SOAK ?= 30s
verify: cluster
	$(TEST_ENV) CACHEASIDE_VERIFY_SCALE=$(VERIFY_SCALE) CACHEASIDE_SOAK=$(VERIFY_SOAK) $(GO) test -race -count=1 -timeout 30m \
		-run 'TestLinearizability|TestFailOpenLateLease|TestFailOpenNoJoin|TestSoak|TestWarmLarge|TestWarmCancel|TestCloseRacesCallers|TestInvalidateBusyStore|TestNoStaleSetRace|TestLocalThreeInstancesStayCoherent|TestEarlyRefresh' -v .
	$(MAKE) admin-browser

# admin-browser renders the operator page (admin/) in headless Chromium, installed by
# scripts/chromium.sh (Debian's chromium package) if missing: a screenshot and DOM dumps,
# checked by TestBrowser (part of verify). admin-screenshot also writes the screenshot to
# docs/admin.png, the README's picture.
ADMIN_SCREENSHOT ?=
admin-browser: redis
	@chromium="$$(bash scripts/chromium.sh)"; \
	echo "CACHEASIDE_CHROMIUM=$$chromium $(GO) test -count=1 -run '^TestBrowser$$' -v ./admin"; \
	$(TEST_ENV) CACHEASIDE_CHROMIUM="$$chromium" CACHEASIDE_SCREENSHOT="$(ADMIN_SCREENSHOT)" \
		$(GO) test -count=1 -run '^TestBrowser$$' -v ./admin

admin-screenshot:
	$(MAKE) admin-browser ADMIN_SCREENSHOT=$(CURDIR)/docs/admin.png

# soak runs mixed reads, writes and faults at full speed on every store at once for
# SOAK_FOR: no violation, heap and goroutines flat. make test runs it for TEST_SOAK.
SOAK_FOR ?= 60s
TEST_SOAK ?= 3s
soak: cluster
	$(TEST_ENV) CACHEASIDE_SOAK=$(SOAK_FOR) $(GO) test -count=1 -timeout 10m -run 'TestSoak' -v .

vet:
	$(GO) vet ./...

# lint: gofmt, then golangci-lint (.golangci.yml: govet with all its analyzers, staticcheck,
# errcheck, revive, gosec, ...) on the library, examples/ and bench/. The pinned version is
# installed into $(TOOLS) (~/.cache/cacheaside-tools, shared by every clone) with go install on first use (it compiles: minutes on 2 vCPUs).
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)/install
	@echo "installing golangci-lint $(GOLANGCI_LINT_VERSION) into $(TOOLS) (go install compiles it: a few minutes, once)"
	GOBIN=$(TOOLS)/install $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mv $(TOOLS)/install/golangci-lint $@

# --allow-parallel-runners: every clone on a machine shares golangci-lint's lock, and a lint
# in another clone (a CI run beside a working tree) must not fail this one.
lint: $(GOLANGCI_LINT) progress
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt: these files are not formatted:"; echo "$$unformatted"; exit 1; fi
	@for m in . examples bench; do \
		[ -f $$m/go.mod ] || continue; \
		echo "== cd $$m && golangci-lint run ./..."; \
		(cd $$m && $(PROGRESS) "lint $$m" -- $(GOLANGCI_LINT) run --allow-parallel-runners --timeout 15m ./...) || exit 1; \
	done

fmt:
	gofmt -w .

cover:
	$(TEST_ENV) $(GO) test -count=1 -coverprofile=coverage.out ./...
	$(GO) tool cover -func=coverage.out | tail -1

cluster:
	bash scripts/cluster.sh

cluster-stop:
	bash scripts/cluster.sh stop

redis:
	bash scripts/redis.sh

# The demo runs on embedded SQLite and, unless a Redis answers on 127.0.0.1:6379 (as make test
# uses), an embedded miniredis, with no setup; DATABASE_URL and REDIS_URL put it on other
# servers, -embedded-redis forces miniredis. DEMO_FLAGS=-quick for a run of a few seconds (go run ./demo -h lists them).
DEMO_FLAGS ?=

demo: progress
	@echo "make demo: compiling examples/demo (the first build compiles the pure-Go SQLite: a minute or two on 2 vCPUs)..."
	@mkdir -p $(TOOLS)
	@cd examples && $(PROGRESS) "building the demo" -- $(GO) build -o $(TOOLS)/demo ./demo
	@echo "make demo: running it (the Redis on $(REDIS_ADDR) if it answers, the embedded miniredis otherwise)"
	cd examples && $(TOOLS)/demo $(DEMO_FLAGS)

# Side-by-side benchmarks against the peers (bench/ is its own module), needing the Redis at
# REDIS_ADDR; every Benchmark function of bench/ is in exactly one group (TestMakeBenchRunsAll
# checks it): the micro-benchmarks (hits, L1, miss + fill, metrics, batch) BENCH_COUNT times of
# BENCH_TIME each (benchstat gives a confidence interval from 6 samples); the codec and
# compression benchmarks CODEC_COUNT times of CODEC_TIME; the hot-key expiry HOTKEY_READS reads
# per case (20,000 reads/s: 200000x is 10 s, five expiries); the behaviour benchmarks (loader
# calls, stale entries) BENCH_RUNS runs each; the outbox (needs the PostgreSQL at
# CACHEASIDE_PG_DSN, default 127.0.0.1:5432 database test) for OUTBOX_TIME per case; the tagged
# hit as the micro-benchmarks; tag against pattern invalidation TAGS_INVALIDATIONS times per
# case, among up to a million keys (in Redis database 3, deleted afterwards). Then a markdown table through benchstat (pinned in
# bench/go.mod as a tool). About three and a half minutes on 2 vCPUs. Raw results:
# bench/bench.out.
BENCH_COUNT ?= 6
BENCH_TIME ?= 200ms
CODEC_COUNT ?= 1
CODEC_TIME ?= 100ms
HOTKEY_READS ?= 200000
BENCH_RUNS ?= 5
OUTBOX_TIME ?= 1s
TAGS_INVALIDATIONS ?= 3
BENCH_GO_TEST = cd bench && $(TEST_ENV) $(GO) test -run '^$$' -timeout 20m

bench: redis
	@echo "Load average at start: $$(cut -d' ' -f1-3 /proc/loadavg)"
	$(BENCH_GO_TEST) -bench '^Benchmark(RedisHit|MemoryHit|L1Hit|MissFill|HitMetrics|Batch)$$' -benchmem -count $(BENCH_COUNT) -benchtime $(BENCH_TIME) . | tee bench.out
	$(BENCH_GO_TEST) -bench '^Benchmark(Codec|CodecHit|CodecHitParallel|Compression)$$' -benchmem -count $(CODEC_COUNT) -benchtime $(CODEC_TIME) . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^BenchmarkHotKeyExpiry$$' -benchmem -count 1 -benchtime $(HOTKEY_READS)x . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^Benchmark(ColdKeyInstances|StaleSetRace|LeaseWaiters)$$' -count 1 -benchtime $(BENCH_RUNS)x . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^BenchmarkOutbox$$' -benchmem -count 1 -benchtime $(OUTBOX_TIME) . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^BenchmarkTagHit$$' -benchmem -count $(BENCH_COUNT) -benchtime $(BENCH_TIME) . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^BenchmarkInvalidateTags$$' -benchmem -count 1 -benchtime $(TAGS_INVALIDATIONS)x . | tee -a bench.out
	@echo "Load average at end: $$(cut -d' ' -f1-3 /proc/loadavg)"
	@echo
	@echo "Machine: $$(nproc) CPUs, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $$($(GO) env GOVERSION), Redis $$(redis-cli -h $$(echo $(REDIS_ADDR) | cut -d: -f1) -p $$(echo $(REDIS_ADDR) | cut -d: -f2) info server 2>/dev/null | grep -m1 redis_version | cut -d: -f2 | tr -d '\r') on loopback"
	@cd bench && $(GO) tool benchstat -format csv bench.out 2>/dev/null | $(GO) run ./cmd/benchtable
