# bash with pipefail: a failing step piped into tee (make bench) fails the target.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

GO ?= go
REDIS_ADDR ?= 127.0.0.1:6379
CLUSTER_ADDRS ?= 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002

TEST_ENV = CACHEASIDE_REDIS_ADDR=$(REDIS_ADDR) CACHEASIDE_CLUSTER_ADDRS=$(CLUSTER_ADDRS)

.PHONY: test vet fmt cover cluster cluster-stop redis demo bench verify soak fuzz fuzz-short

# Fuzz targets, as package:Target; each runs alone (go test takes one -fuzz target at a time).
FUZZ_TARGETS = ./internal/envelope:FuzzEnvelope .:FuzzDecompress .:FuzzOpen .:FuzzDecodeJSON \
	.:FuzzDecodeMsgpack .:FuzzDecodeProto .:FuzzDecodeRaw
FUZZTIME ?= 3s

test: redis cluster
	$(GO) vet ./...
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted:"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	@summary=$$(mktemp); status=0; \
	echo "$(TEST_ENV) CACHEASIDE_SOAK=$(TEST_SOAK) $(GO) test -race -count=1 -timeout 8m ./..."; \
	$(TEST_ENV) CACHEASIDE_SOAK=$(TEST_SOAK) CACHEASIDE_LINZ_SUMMARY=$$summary $(GO) test -race -count=1 -timeout 8m ./... || status=$$?; \
	echo "Linearizability checks, one line per scenario and store (README: How we test):"; \
	cat $$summary; rm -f $$summary; exit $$status
	@if [ -f bench/go.mod ]; then \
		echo "cd bench && $(GO) vet ./... && $(GO) test -count=1 ./..."; \
		cd bench && $(GO) vet ./... && $(TEST_ENV) $(GO) test -count=1 ./...; \
	fi
	@if [ -f examples/go.mod ]; then \
		echo "cd examples && $(GO) vet ./... && $(GO) test -count=1 ./..."; \
		cd examples && $(GO) vet ./... && $(TEST_ENV) $(GO) test -count=1 ./...; \
	fi
	$(MAKE) fuzz-short

# A short run of every fuzz target (part of test); new failures land in testdata/fuzz.
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
# than CI does, and the soak for VERIFY_SOAK, under -race: about five minutes. Each scenario
# prints its line.
VERIFY_SCALE ?= 6
VERIFY_SOAK ?= 30s
verify: cluster
	$(TEST_ENV) CACHEASIDE_VERIFY_SCALE=$(VERIFY_SCALE) CACHEASIDE_SOAK=$(VERIFY_SOAK) $(GO) test -race -count=1 -timeout 30m \
		-run 'TestLinearizability|TestFailOpenLateLease|TestFailOpenNoJoin|TestSoak' -v .

# soak runs mixed reads, writes and faults at full speed on every store at once for
# SOAK_FOR: no violation, heap and goroutines flat. make test runs it for TEST_SOAK.
SOAK_FOR ?= 60s
TEST_SOAK ?= 3s
soak: cluster
	$(TEST_ENV) CACHEASIDE_SOAK=$(SOAK_FOR) $(GO) test -count=1 -timeout 10m -run 'TestSoak' -v .

vet:
	$(GO) vet ./...

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

# The demo runs on embedded SQLite + miniredis with no setup; DATABASE_URL and REDIS_URL put it
# on real servers. DEMO_FLAGS=-quick for a run of a few seconds (go run ./demo -h lists them).
DEMO_FLAGS ?=

demo:
	cd examples && $(GO) run ./demo $(DEMO_FLAGS)

# Side-by-side benchmarks against the peers (bench/ is its own module), needing the Redis at
# REDIS_ADDR; every Benchmark function of bench/ is in exactly one group (TestMakeBenchRunsAll
# checks it): the micro-benchmarks (hits, L1, miss + fill, metrics, batch) BENCH_COUNT times of
# BENCH_TIME each (benchstat gives a confidence interval from 6 samples); the codec and
# compression benchmarks CODEC_COUNT times of CODEC_TIME; the hot-key expiry HOTKEY_READS reads
# per case (20,000 reads/s: 200000x is 10 s, five expiries); the behaviour benchmarks (loader
# calls, stale entries) BENCH_RUNS runs each; the outbox (needs the PostgreSQL at
# CACHEASIDE_PG_DSN, default 127.0.0.1:5432 database test) for OUTBOX_TIME per case. Then a markdown table through benchstat (pinned in
# bench/go.mod as a tool). About three and a half minutes on 2 vCPUs. Raw results:
# bench/bench.out.
BENCH_COUNT ?= 6
BENCH_TIME ?= 200ms
CODEC_COUNT ?= 1
CODEC_TIME ?= 100ms
HOTKEY_READS ?= 200000
BENCH_RUNS ?= 5
OUTBOX_TIME ?= 1s
BENCH_GO_TEST = cd bench && $(TEST_ENV) $(GO) test -run '^$$' -timeout 20m

bench: redis
	@echo "Load average at start: $$(cut -d' ' -f1-3 /proc/loadavg)"
	$(BENCH_GO_TEST) -bench '^Benchmark(RedisHit|MemoryHit|L1Hit|MissFill|HitMetrics|Batch)$$' -benchmem -count $(BENCH_COUNT) -benchtime $(BENCH_TIME) . | tee bench.out
	$(BENCH_GO_TEST) -bench '^Benchmark(Codec|CodecHit|CodecHitParallel|Compression)$$' -benchmem -count $(CODEC_COUNT) -benchtime $(CODEC_TIME) . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^BenchmarkHotKeyExpiry$$' -benchmem -count 1 -benchtime $(HOTKEY_READS)x . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^Benchmark(ColdKeyInstances|StaleSetRace)$$' -count 1 -benchtime $(BENCH_RUNS)x . | tee -a bench.out
	$(BENCH_GO_TEST) -bench '^BenchmarkOutbox$$' -benchmem -count 1 -benchtime $(OUTBOX_TIME) . | tee -a bench.out
	@echo "Load average at end: $$(cut -d' ' -f1-3 /proc/loadavg)"
	@echo
	@echo "Machine: $$(nproc) CPUs, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $$($(GO) env GOVERSION), Redis $$(redis-cli -h $$(echo $(REDIS_ADDR) | cut -d: -f1) -p $$(echo $(REDIS_ADDR) | cut -d: -f2) info server 2>/dev/null | grep -m1 redis_version | cut -d: -f2 | tr -d '\r') on loopback"
	@cd bench && $(GO) tool benchstat -format csv bench.out 2>/dev/null | $(GO) run ./cmd/benchtable
