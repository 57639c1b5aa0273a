// Package bench holds side-by-side benchmarks of cacheaside and its peers
// (github.com/go-redis/cache/v9, github.com/viccon/sturdyc), with floors beneath them: what
// the same work costs with no cache library at all (a raw go-redis GET and decode for a Redis
// hit, otter's GetIfPresent for an in-process hit).
//
// It is a module of its own, so the peers never reach the library's go.mod. From the
// repository root, `make bench` runs everything and prints a markdown table (benchstat). The
// Redis benchmarks need a Redis at 127.0.0.1:6379 (CACHEASIDE_REDIS_ADDR overrides); they skip
// without one.
//
// Cases:
//
//	BenchmarkRedisHit/<impl>/{serial,parallel}   a hit in Redis, decoded
//	BenchmarkMemoryHit/<impl>/{serial,parallel}  a hit in process memory
//	BenchmarkMissFill/<impl>                     a miss: load, store, return
//	BenchmarkColdKeyInstances/<impl>             8 instances on separate clients, 200 goroutines,
//	                                             one cold key: loader calls (ours: 1)
//	BenchmarkStaleSetRace/<impl>                 slow loaders race write-then-invalidate on 50
//	                                             keys: entries left stale at rest (ours: 0)
package bench
