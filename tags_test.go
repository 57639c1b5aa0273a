package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// tagBackends are the stores tags run on: memory, the real Redis, the real Cluster (where a
// tag's set and its entries live in different hash slots), and each with a local cache.
func forEachTagBackend(t *testing.T, fn func(t *testing.T, b backend, opts []Option)) {
	for _, mk := range []func() backend{memoryBackend, miniredisBackend, redisBackend, clusterBackend} {
		for _, l1 := range []bool{false, true} {
			b := mk()
			if b.advance == nil {
				b.advance = time.Sleep
			}
			// Tests here count loads: store timeouts a loaded machine under -race does not
			// reach (a timed-out fill rightly leaves its value unstored, and it loads again).
			name, opts := b.name, slowMachine
			if l1 {
				if b.name == "miniredis" {
					continue
				}
				name, opts = name+"+l1", concat(slowMachine, []Option{WithLocalCache(1000, time.Minute)})
			}
			t.Run(name, func(t *testing.T) { fn(t, b, opts) })
		}
	}
}

// TestTagsSeedCase: a product's price change invalidates the product, every category list
// and every search page that shows it, with one InvalidateTags, on every instance; entries not
// tagged with it stay cached.
func TestTagsSeedCase(t *testing.T) {
	forEachTagBackend(t, func(t *testing.T, b backend, opts []Option) {
		cs := instances[string](t, b, 3, opts...)
		if cs[0].l1 != nil {
			waitLive(t, cs...)
		}
		var price atomic.Int64
		price.Store(100)
		var loads atomic.Int64
		page := func(name string) func(context.Context) (string, error) {
			return func(context.Context) (string, error) {
				loads.Add(1)
				return fmt.Sprintf("%s@%d", name, price.Load()), nil
			}
		}
		type entry struct {
			key  string
			tags []string
		}
		entries := []entry{
			{"product:42", []string{"product:42"}},
			{"cat:7:page:1", []string{"category:7", "product:42", "product:43"}},
			{"cat:7:page:2", []string{"category:7", "product:44"}},
			{"search:shoes:1", []string{"product:42", "product:44"}},
			{"product:44", []string{"product:44"}},
		}
		// readAll reads every entry on instance first, then on the others, which must agree:
		// with a local cache, once the invalidation message reached them (eventually, within a
		// bound that only catches a hang).
		readAll := func(first int) map[string]string {
			got := make(map[string]string)
			for _, e := range entries {
				v, err := cs[first].GetOrLoad(bg(), e.key, page(e.key), Tags(e.tags...))
				require.NoError(t, err)
				got[e.key] = v
			}
			for i, c := range cs {
				for _, e := range entries {
					require.Eventually(t, func() bool {
						v, err := c.GetOrLoad(bg(), e.key, page(e.key), Tags(e.tags...))
						return err == nil && v == got[e.key]
					}, 5*time.Second, time.Millisecond, "instance %d, %s", i, e.key)
				}
			}
			return got
		}
		readAll(0)
		require.EqualValues(t, len(entries), loads.Load(), "one load per entry, every instance served from the cache")

		price.Store(90)
		require.NoError(t, cs[1].InvalidateTags(bg(), "product:42"))
		loads.Store(0)
		got := readAll(1)
		require.EqualValues(t, 3, loads.Load(), "the three entries tagged product:42 were reloaded, once each")
		require.Equal(t, "product:42@90", got["product:42"])
		require.Equal(t, "cat:7:page:1@90", got["cat:7:page:1"])
		require.Equal(t, "search:shoes:1@90", got["search:shoes:1"])
		require.Equal(t, "cat:7:page:2@100", got["cat:7:page:2"], "not tagged product:42: still cached")
		require.Equal(t, "product:44@100", got["product:44"])

		// Invalidated again: its records were removed by the first InvalidateTags and made
		// anew by the reloads.
		price.Store(80)
		require.NoError(t, cs[2].InvalidateTags(bg(), "category:7", "product:42"))
		loads.Store(0)
		got = readAll(2)
		require.EqualValues(t, 4, loads.Load())
		require.Equal(t, "cat:7:page:2@80", got["cat:7:page:2"])
		require.Equal(t, "product:44@100", got["product:44"])
		require.EqualValues(t, 2, cs[2].Stats().TagInvalidations)
	})
}

// TestTagsLoadDuringInvalidate: a load that began before InvalidateTags(t) returned, and
// finishes after it, is never stored for its key tagged t, on any store, for GetOrLoad and for
// GetOrLoadMany: the next read loads again and gets the new value. With the tags recorded
// after the load (unsafeLateTags), the old value was stored and served.
func TestTagsLoadDuringInvalidate(t *testing.T) {
	forEachTagBackend(t, func(t *testing.T, b backend, opts []Option) {
		for _, many := range []bool{false, true} {
			func() {
				cs := instances[string](t, b, 2, opts...)
				if cs[0].l1 != nil {
					waitLive(t, cs...)
				}
				var version atomic.Int64
				started := make(chan struct{})
				proceed := make(chan struct{})
				var once sync.Once
				read := func(c *Cache[string]) string {
					if many {
						m, err := c.GetOrLoadMany(bg(), []string{"k"}, func(_ context.Context, keys []string) (map[string]string, error) {
							v := fmt.Sprint("v", version.Load())
							once.Do(func() { close(started); <-proceed })
							return map[string]string{"k": v}, nil
						}, TagsOf(func(key string) []string { return []string{"t:" + key} }))
						require.NoError(t, err)
						return m["k"]
					}
					v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
						v := fmt.Sprint("v", version.Load())
						once.Do(func() { close(started); <-proceed })
						return v, nil
					}, Tags("t:k"))
					require.NoError(t, err)
					return v
				}
				done := make(chan string)
				go func() { done <- read(cs[0]) }()
				<-started // the load read version 0 and is stalled
				version.Store(1)
				require.NoError(t, cs[1].InvalidateTags(bg(), "t:k"))
				close(proceed)
				require.Equal(t, "v0", <-done, "the caller that loaded gets its own load")
				for i, c := range cs {
					require.Equal(t, "v1", read(c), "many=%v, instance %d: a read after InvalidateTags returned must not see the old load", many, i)
				}
			}()
		}
	})
}

// TestTagsWarm: Warm tags what it loads (WithWarmCallOptions), and InvalidateTags finds it.
func TestTagsWarm(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b, slowMachine...)
		keys := make([]string, 250)
		for i := range keys {
			keys[i] = fmt.Sprint("item:", i)
		}
		gen := "a"
		load := func(_ context.Context, missing []string) (map[string]string, error) {
			m := make(map[string]string, len(missing))
			for _, k := range missing {
				m[k] = gen
			}
			return m, nil
		}
		res, err := c.Warm(bg(), keys, load, WithWarmBatchSize(100), WithWarmCallOptions(TagsOf(func(key string) []string {
			if strings.HasSuffix(key, "0") {
				return []string{"tens"}
			}
			return nil
		})))
		require.NoError(t, err)
		require.Equal(t, 250, res.Loaded)
		gen = "b"
		require.NoError(t, c.InvalidateTags(bg(), "tens"))
		got, err := c.GetOrLoadMany(bg(), keys, load)
		require.NoError(t, err)
		for _, k := range keys {
			want := "a"
			if strings.HasSuffix(k, "0") {
				want = "b"
			}
			require.Equal(t, want, got[k], k)
		}

		_, err = c.Warm(bg(), keys, load, WithWarmCallOptions(Tags("")))
		require.ErrorIs(t, err, ErrInvalidOption)
	})
}

// TestTagIndexBounded: records of entries that expired leave the index. On Redis a tag's set
// loses them on its next record and expires with its last one; the memory index sweeps them.
func TestTagIndexBounded(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		forEachReal(t, func(t *testing.T, b backend) {
			c := backendCache[string](t, b, WithTTL(100*time.Millisecond), WithLoadTimeout(100*time.Millisecond))
			raw := b.client(t)
			load := func(context.Context) (string, error) { return "v", nil }
			for i := range 50 {
				_, err := c.GetOrLoad(bg(), fmt.Sprint("k", i), load, Tags("hot"))
				require.NoError(t, err)
			}
			set := c.tags.name("hot")
			require.EqualValues(t, 50, raw.ZCard(bg(), set).Val())
			ttl := raw.PTTL(bg(), set).Val()
			require.Positive(t, ttl, "the set expires with its last record")
			life := c.gw.leaseTTL + max(c.cfg.ttl, c.cfg.negativeTTL) + c.fresh.extraTTL + tagLifeSlack
			require.LessOrEqual(t, ttl, life+time.Second, "the set lives as long as its longest record")
			// The records' life (lease + TTL + slack) is over: tests cannot wait a minute, so
			// age them instead by moving their expiries into the past.
			members := raw.ZRange(bg(), set, 0, -1).Val()
			for _, m := range members {
				raw.ZAdd(bg(), set, redis.Z{Score: 1, Member: m})
			}
			_, err := c.GetOrLoad(bg(), "fresh", load, Tags("hot"))
			require.NoError(t, err)
			require.EqualValues(t, 1, raw.ZCard(bg(), set).Val(), "expired records were dropped by the next record")
		})
	})
	t.Run("memory", func(t *testing.T) {
		s := NewMemoryStore()
		defer s.Close()
		ctx := bg()
		for i := range 3 * memTagSweepMin {
			require.NoError(t, s.AddTags(ctx, map[string][]string{fmt.Sprint("t", i%7): {fmt.Sprint("k", i)}}, time.Millisecond))
		}
		time.Sleep(5 * time.Millisecond)
		for i := range memTagSweepMin + 1 {
			require.NoError(t, s.AddTags(ctx, map[string][]string{"live": {fmt.Sprint("k", i)}}, time.Hour))
		}
		s.tags.mu.Lock()
		n := 0
		for _, recs := range s.tags.tags {
			n += len(recs)
		}
		s.tags.mu.Unlock()
		require.LessOrEqual(t, n, 2*(memTagSweepMin+1), "expired records were swept")
		got, err := s.TaggedKeys(ctx, []string{"t0", "live"})
		require.NoError(t, err)
		require.Empty(t, got[0])
		require.Len(t, got[1], memTagSweepMin+1)
	})
}

// TestTagStoreConformance: the TagStore semantics both stores must share: records per tag,
// versions that grow, RemoveTags that keeps a key recorded again since it was read, expiry.
func TestTagStoreConformance(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ts := b.newStore(t).(TagStore)
		p := testPrefix(t)
		tag := func(s string) string { return p + "\x00tag:" + s }
		ctx := bg()
		require.NoError(t, ts.AddTags(ctx, map[string][]string{tag("a"): {p + "1", p + "2"}, tag("b"): {p + "2"}}, time.Minute))
		got, err := ts.TaggedKeys(ctx, []string{tag("a"), tag("b"), tag("none")})
		require.NoError(t, err)
		require.Len(t, got, 3)
		require.ElementsMatch(t, []string{p + "1", p + "2"}, keysOf(got[0]))
		require.Equal(t, []string{p + "2"}, keysOf(got[1]))
		require.Empty(t, got[2])

		// Recorded again after the read: a new version, which RemoveTags of the old leaves.
		require.NoError(t, ts.AddTags(ctx, map[string][]string{tag("a"): {p + "1"}}, time.Minute))
		again, err := ts.TaggedKeys(ctx, []string{tag("a")})
		require.NoError(t, err)
		for _, tk := range again[0] {
			if tk.Key == p+"1" {
				require.Greater(t, tk.Version, versionOf(got[0], p+"1"), "a new record has a greater version")
			}
		}
		require.NoError(t, ts.RemoveTags(ctx, map[string][]TaggedKey{tag("a"): got[0], tag("b"): got[1]}))
		left, err := ts.TaggedKeys(ctx, []string{tag("a"), tag("b")})
		require.NoError(t, err)
		require.Equal(t, []string{p + "1"}, keysOf(left[0]), "recorded again since the read: kept")
		require.Empty(t, left[1])

		// Expired records are not reported.
		require.NoError(t, ts.AddTags(ctx, map[string][]string{tag("short"): {p + "x"}}, 20*time.Millisecond))
		b.advance(60 * time.Millisecond)
		short, err := ts.TaggedKeys(ctx, []string{tag("short")})
		require.NoError(t, err)
		require.Empty(t, short[0])
	})
}

func keysOf(tks []TaggedKey) []string {
	out := make([]string, len(tks))
	for i, tk := range tks {
		out[i] = tk.Key
	}
	return out
}

func versionOf(tks []TaggedKey, key string) int64 {
	for _, tk := range tks {
		if tk.Key == key {
			return tk.Version
		}
	}
	return -1
}

// TestInvalidatePatternKeepsTags: InvalidatePattern("*") removes entries, never a tag's
// record set, so InvalidateTags still finds the entries loaded after it.
func TestInvalidatePatternKeepsTags(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b)
		v := "a"
		load := func(context.Context) (string, error) { return v, nil }
		_, err := c.GetOrLoad(bg(), "k", load, Tags("t"))
		require.NoError(t, err)
		n, err := c.InvalidatePattern(bg(), "*")
		require.NoError(t, err)
		require.Equal(t, 1, n, "the entry counts, the tag's set does not")
		_, err = c.GetOrLoad(bg(), "k", load, Tags("t"))
		require.NoError(t, err)
		v = "b"
		require.NoError(t, c.InvalidateTags(bg(), "t"))
		got, err := c.GetOrLoad(bg(), "k", load, Tags("t"))
		require.NoError(t, err)
		require.Equal(t, "b", got)
	})
}

// TestTagsUnsupported: a Store without TagStore refuses Tags, TagsOf and InvalidateTags with
// ErrTagsUnsupported; empty tags are refused.
func TestTagsUnsupported(t *testing.T) {
	m := NewMemoryStore()
	defer m.Close()
	c := newTestCache[string](t, struct{ Store }{m})
	load := func(context.Context) (string, error) { return "v", nil }
	_, err := c.GetOrLoad(bg(), "k", load, Tags("t"))
	require.ErrorIs(t, err, ErrTagsUnsupported)
	_, err = c.GetOrLoadMany(bg(), []string{"k"}, func(context.Context, []string) (map[string]string, error) { return nil, nil },
		TagsOf(func(string) []string { return nil }))
	require.ErrorIs(t, err, ErrTagsUnsupported)
	require.ErrorIs(t, c.InvalidateTags(bg(), "t"), ErrTagsUnsupported)

	ok := newTestCache[string](t, m)
	_, err = ok.GetOrLoad(bg(), "k", load, Tags("a", ""))
	require.ErrorIs(t, err, ErrInvalidOption)
	_, err = ok.GetOrLoad(bg(), "k", load, TagsOf(nil))
	require.ErrorIs(t, err, ErrInvalidOption)
	require.Error(t, ok.InvalidateTags(bg(), ""))
	require.NoError(t, ok.InvalidateTags(bg()))
	require.NoError(t, ok.InvalidateTags(bg(), "never-used"))
}

// failingTags is a store whose tag index fails.
type failingTags struct {
	*MemoryStore
	add, read atomic.Bool
}

var errTagIndex = errors.New("injected: tag index down")

func (f *failingTags) AddTags(ctx context.Context, tagged map[string][]string, life time.Duration) error {
	if f.add.Load() {
		return errTagIndex
	}
	return f.MemoryStore.AddTags(ctx, tagged, life)
}

func (f *failingTags) TaggedKeys(ctx context.Context, tags []string) ([][]TaggedKey, error) {
	if f.read.Load() {
		return nil, errTagIndex
	}
	return f.MemoryStore.TaggedKeys(ctx, tags)
}

// TestTagFailures: a load whose tags cannot be recorded returns its value but stores nothing
// (an InvalidateTags could not find it) and frees its lease; an InvalidateTags that cannot
// read the index fails with an *InvalidationError naming the tags, within its budget.
func TestTagFailures(t *testing.T) {
	m := NewMemoryStore()
	defer m.Close()
	s := &failingTags{MemoryStore: m}
	c := newTestCache[string](t, s, WithInvalidateTimeout(200*time.Millisecond))
	var loads atomic.Int64
	load := func(context.Context) (string, error) { loads.Add(1); return "v", nil }

	s.add.Store(true)
	v, err := c.GetOrLoad(bg(), "k", load, Tags("t"))
	require.NoError(t, err)
	require.Equal(t, "v", v)
	m2, err := c.GetOrLoadMany(bg(), []string{"x", "y"}, func(_ context.Context, keys []string) (map[string]string, error) {
		loads.Add(1)
		return map[string]string{"x": "v", "y": "v"}, nil
	}, Tags("t"))
	require.NoError(t, err)
	require.Len(t, m2, 2)
	require.EqualValues(t, 2, c.Stats().TagFailures)
	for _, k := range []string{"k", "x", "y"} {
		// A batch's leases are released in the background: wait for it (a hang-catching bound).
		require.Eventually(t, func() bool {
			lk, _ := m.GetOrLease(bg(), c.cfg.prefix+k, "probe", time.Second)
			_, _ = m.Release(bg(), c.cfg.prefix+k, "probe")
			return lk.Granted
		}, 5*time.Second, time.Millisecond, "%s: nothing stored and no lease left behind", k)
	}

	s.add.Store(false)
	s.read.Store(true)
	err = c.InvalidateTags(bg(), "t", "u")
	require.ErrorIs(t, err, ErrInvalidationFailed)
	require.ErrorIs(t, err, errTagIndex)
	var ie *InvalidationError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, []string{"t", "u"}, ie.Tags)
	require.Contains(t, err.Error(), `entries tagged "t", "u"`)
	require.EqualValues(t, 1, c.Stats().InvalidationFailures)
}

// countingTags counts the tag records a RedisStore is asked to make.
type countingTags struct {
	*RedisStore
	adds atomic.Int64
}

func (s *countingTags) AddTags(ctx context.Context, tagged map[string][]string, life time.Duration) error {
	s.adds.Add(1)
	return s.RedisStore.AddTags(ctx, tagged, life)
}

// TestTagsNotOnHitPath: a hit with Tags records no tag (one store call, as untagged); each
// load records once.
func TestTagsNotOnHitPath(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		s := &countingTags{RedisStore: b.newStore(t).(*RedisStore)}
		c := newTestCache[string](t, s, slowMachine...)
		load := func(context.Context) (string, error) { return "v", nil }
		for range 20 {
			_, err := c.GetOrLoad(bg(), "k", load, Tags("a", "b"))
			require.NoError(t, err)
		}
		require.EqualValues(t, 1, s.adds.Load(), "one record for the load, none for the 19 hits")
	})
}

// SupportsTags says whether the store indexes tags: the built-in stores do, a store without
// TagStore does not.
func TestSupportsTags(t *testing.T) {
	ms := NewMemoryStore()
	defer ms.Close()
	if c := newTestCache[string](t, ms); !c.SupportsTags() {
		t.Error("MemoryStore: SupportsTags is false")
	}
	if c := newTestCache[string](t, struct{ Store }{ms}); c.SupportsTags() {
		t.Error("a store without TagStore: SupportsTags is true")
	}
}
