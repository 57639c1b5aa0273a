// Package bench holds side-by-side benchmarks of cacheaside and its peers
// (github.com/go-redis/cache/v9, github.com/viccon/sturdyc), with floors beneath them: what
// the same work costs with no cache library at all (a raw go-redis GET and decode for a Redis
// hit, otter's GetIfPresent for an in-process hit, a raw pipelined HGET and decode for a
// batch).
//
// It is a module of its own, so the peers never reach the library's go.mod. From the
// repository root, `make bench` runs every benchmark below (TestMakeBenchRunsAll checks that
// it does) and prints a markdown table (benchstat). The Redis benchmarks need a Redis at
// 127.0.0.1:6379 (CACHEASIDE_REDIS_ADDR overrides); they skip without one. sturdyc keeps
// values in process memory: it appears where the comparison is in process (memory and L1
// hits, miss + fill, batch from memory) and in the behaviour benchmarks, whose comments say
// what its figures show.
//
// Cases:
//
//	BenchmarkRedisHit/<impl>/{serial,parallel}    a hit in Redis, decoded, with cpu-ns/op (this
//	                                              process's CPU): ours, go-redis-cache,
//	                                              floor-go-redis-get-json (ContextTimeoutEnabled
//	                                              clients); ours-default-client,
//	                                              floor-default-client-get-json (go-redis defaults)
//	BenchmarkRedisHit/ours-vs-floor[-default-client]/{serial,parallel}  ours and the floor
//	                                              (GET + decode) in turn on one client:
//	                                              ours/floor, the ratio of one run
//	BenchmarkMemoryHit/<impl>/{serial,parallel}   a hit in process memory: ours-memory (the
//	                                              MemoryStore, decoding each hit), sturdyc,
//	                                              go-redis-cache-local, floor-otter
//	BenchmarkL1Hit/<impl>/{serial,parallel}       a hit in the in-process cache of decoded values:
//	                                              cacheaside (WithLocalCache), otter-floor
//	                                              (plain GetIfPresent), otter-expiry (per-entry
//	                                              expiry), otter-expiry-coarse (the same on a
//	                                              1 ms coarse clock), sturdyc, go-redis-cache-local
//	BenchmarkMissFill/<impl>                      a miss: load, store, return: ours,
//	                                              go-redis-cache, floor-go-redis-get-set-json,
//	                                              ours-memory, sturdyc, floor-otter
//	BenchmarkHitMetrics/<exporter>/{serial,parallel}  the hit path with off, prometheus,
//	                                              prometheus+groups, tracing
//	BenchmarkBatch/<read>/{serial,parallel}       100 cached keys: GetOrLoadMany,
//	                                              GetOrLoadManyDefaultClient, SequentialGetOrLoad,
//	                                              FloorPipelinedHGET, GetOrLoadManyL1, sturdyc
//	                                              (GetOrFetchBatch); go-redis/cache has no batch read
//	BenchmarkBatch/GetOrLoadManyVs<other>         interleaved with FloorPipelinedHGET and with
//	                                              SequentialGetOrLoad: many/other, the ratio
//	BenchmarkHotKeyExpiry/<impl>                  1000 readers on one key expiring every 2 s: loads,
//	                                              loads/expiry, slow-reads/expiry, p50/p99/p99.9/max:
//	                                              ours-plain, ours-early-refresh,
//	                                              ours-stale-while-revalidate, go-redis-cache,
//	                                              sturdyc-plain, sturdyc-early-refresh
//	BenchmarkColdKeyInstances/<impl>              8 instances on separate clients, 200 goroutines,
//	                                              one cold key: loader calls (ours: 1); ours,
//	                                              go-redis-cache, sturdyc
//	BenchmarkLeaseWaiters/{standalone,cluster}    8 instances x 25 goroutines, one cold key per op,
//	                                              a 50 ms load: p50/p99/max latency minus the
//	                                              load (the waiters of another instance's lease,
//	                                              woken by its fill), loader calls per op; ours
//	BenchmarkStaleSetRace/<impl>                  slow loaders race write-then-invalidate on 50
//	                                              keys: entries left stale at rest (ours: 0); ours,
//	                                              go-redis-cache, sturdyc
//	BenchmarkCodec/<codec>/<wrapper>/<size>       a fill (encode) and a hit (decode) on the memory
//	                                              store, with bytes/value: json, msgpack, proto,
//	                                              raw x plain, s2, aes, s2+aes x small, 10KiB, 1MiB
//	BenchmarkCodecHit/<codec>/<wrapper>/<size>    the hit (decode) alone
//	BenchmarkCodecHitParallel/<codec>/<wrapper>/<size>  the same on every CPU
//	BenchmarkCompression/<value>/<algorithm>      s2 against zstd (fastest, default): compress
//	                                              and decompress 10KiB-json, 1MiB-json,
//	                                              1MiB-blob-json; encode-ns/op, decode-ns/op,
//	                                              bytes/value
//	BenchmarkOutbox/write/{plain,outbox}          update one PostgreSQL row and commit, then
//	                                              Invalidate; the same through outbox.Do
//	BenchmarkOutbox/relay                         rows/s one outbox relay delivers
package bench
