// Package cacheaside is a cache-aside layer for Go services over Redis (standalone, Sentinel,
// Cluster) or process memory: wrap repository reads in [Cache.GetOrLoad], call
// [Cache.Invalidate] after each database write.
//
// With default options a [Cache] guarantees:
//
//  1. Stampede: any number of goroutines in any number of processes asking for one missing
//     key cause one loader call, as long as the load finishes within its lease.
//  2. No stale set: once Invalidate(k) has returned, a value that a loader began loading
//     before that call is never stored for k, and a GetOrLoad(k) that starts after it
//     returned never returns such a value. The same holds for [Cache.InvalidateTags] and
//     the keys whose loads were tagged ([Tags], [TagsOf]).
//  3. Fail open: when the store errors or is unreachable, GetOrLoad returns the loader's
//     value with no error, and after a few failures stops waiting on the store at all until a
//     background probe finds it answering again.
//  4. Bad data: bytes at a cache key that do not decode are a miss, replaced by the next fill;
//     so are values of another codec or type, or of another shape of the type (schema.go).
//  5. Cancellation: a caller whose context ends gets ctx.Err() promptly; the shared load goes
//     on for the other callers.
//  6. Invalidation on a healthy store succeeds: [Cache.Invalidate],
//     [Cache.InvalidatePattern] and [Cache.InvalidateTags] have their own budget ([WithInvalidateTimeout], 10 s, with
//     retries), not the read path's store timeout, and ignore the circuit breaker. When one
//     fails, its error is an [*InvalidationError] ([ErrInvalidationFailed]) naming what may
//     still be stale, and where.
//  7. No lease outlives its load: a lease this process will not fill (a failed fill, a failed
//     or abandoned lookup, a load ended by [Cache.Close]) is released, and Close returns only
//     after every running call has returned (with [ErrClosed] unless its own context ended).
//
// The lease protocol behind 1 and 2 is described in lease.go.
//
// # Architecture
//
// cacheaside.go holds the public entry points. Behind them a Cache composes parts, each a type
// in a file of its own: the store gateway (gateway.go: every store call bounded, metered and
// guarded by the circuit breaker) with the lease operations on it (lease.go); the in-process
// flights (flight.go); the refresher (xfetch.go: the freshness verdict of a hit); the L1
// (local.go) and the broadcast that keeps it coherent (broadcast.go); the lifecycle that owns
// the goroutines (lifecycle.go). get.go, batch.go, invalidate.go and warm.go carry out calls
// with them. The README's Layout section lists every file.
//
// # Stores
//
// A [Cache] keeps its values in a [Store]: [NewRedisStore] over any go-redis
// [github.com/redis/go-redis/v9.UniversalClient] (standalone, Sentinel, Cluster, Ring), or
// [NewMemoryStore] for one process. A Store of your own must keep the lease semantics the
// [Store] interface documents; what it does better it declares with optional interfaces, never
// by its type: [ValueReader] (a plain read for hits), [LeaseManyStore] and [ReleaseManyStore]
// (batches), [InProcessStore] (hits without a network), [TagStore] (tags), [Broadcaster]
// (invalidation messages, needed by [WithLocalCache]) and [WakingStore] (lease waiters woken
// by the fill).
//
// # Reads, writes, batches
//
// [New] builds a cache for one value type. [Cache.GetOrLoad] reads one key through the
// cache, [Cache.GetOrLoadMany] a batch with one loader call for the missing keys, and
// [Cache.Warm] fills many keys ahead of traffic. [Cache.Invalidate],
// [Cache.InvalidatePattern] and [Cache.InvalidateTags] (entries tagged by their loads with
// [Tags] or [TagsOf], found in time proportional to their number) remove entries after a write; [ErrNotFound] from a loader caches
// the absence (see [WithNegativeTTL]). [Cache.Close] stops the cache's goroutines.
//
// # Options
//
// Every option says its default. The common ones: [WithTTL], [WithPrefix],
// [WithLocalCache] (an in-process L1 kept coherent by a broadcast), [WithEarlyRefresh],
// [WithStaleWhileRevalidate], [WithCircuitBreaker], [WithCodec], [WithCompression],
// [WithEncryption] (with a [KeyRing]). Per call: [TTL], [NegativeTTL], [Tags] and [TagsOf].
//
// # Observability
//
// [Cache.Stats] counts hits, misses, loads and store errors; [WithMetricsExporter] hands them
// to an exporter ([Metrics]): package cacheasideprom's WithPrometheus exports them to a
// Prometheus Registerer you pass, package cacheasideotel's WithMeterProvider to OpenTelemetry
// (which it also adapts for [WithTracer], which traces loads and store calls); [WithName] names
// the cache; [WithLogger] logs through [log/slog]. The core package links neither Prometheus
// nor OpenTelemetry.
package cacheaside
