package cacheaside

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	msgpackcodec "github.com/cacheaside/cacheaside/codec/msgpack"
	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/klauspost/compress/s2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// putFrame overwrites the value stored at store key sk with frame: through the raw client on
// Redis (field "v" of the entry's hash, keeping its TTL), through a lease and a fill on other
// stores.
func putFrame(t testing.TB, b backend, raw rawWriter, s Store, sk string, frame []byte) {
	t.Helper()
	if raw != nil {
		require.NoError(t, raw.HSet(bg(), sk, "v", frame).Err())
		require.NoError(t, raw.PExpire(bg(), sk, time.Minute).Err())
		return
	}
	lk, err := s.Lease(bg(), sk, "tamper", time.Second)
	require.NoError(t, err)
	require.True(t, lk.Granted)
	ok, err := s.Fill(bg(), sk, "tamper", frame, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
}

// rawWriter is a raw client to the store's server, nil for the memory store.
type rawWriter = redis.UniversalClient

// peekFrame returns the value stored at sk, or nil, without taking a lease.
func peekFrame(t testing.TB, raw rawWriter, s Store, sk string) []byte {
	t.Helper()
	if raw == nil {
		e, ok := s.(*MemoryStore).c.GetIfPresent(sk)
		if !ok || e.expires <= s.(*MemoryStore).now() {
			return nil
		}
		return e.value
	}
	v, err := raw.HGet(bg(), sk, "v").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	require.NoError(t, err)
	return v
}

func (c *Cache[T]) rejected() uint64 {
	var n uint64
	for i := range c.entries.wire.rejects {
		n += c.entries.wire.rejects[i].Load()
	}
	return n
}

// tamperBackends are the stores a tampering test pokes at: the memory store, and the real Redis
// and Cluster through their raw clients.
func tamperBackends(t *testing.T, fn func(t *testing.T, b backend, s Store, raw rawWriter)) {
	t.Run("memory", func(t *testing.T) {
		b := memoryBackend()
		fn(t, b, b.newStore(t), nil)
	})
	forEachReal(t, func(t *testing.T, b backend) {
		fn(t, b, b.newStore(t), b.client(t))
	})
}

// Flipping any bit of any byte of a stored encrypted value (header, key id, nonce, ciphertext,
// tag) makes it a miss: counted, reloaded and replaced, never an error or a wrong value.
func TestTamperedValueIsAMiss(t *testing.T) {
	tamperBackends(t, func(t *testing.T, b backend, s Store, raw rawWriter) {
		for _, tc := range []struct {
			name string
			opts []Option
			v    string
		}{
			{"plain", nil, "a secret value"},
			{"compressed", []Option{WithCompression(1)}, strings.Repeat("a secret value ", 8)},
			{"not found", nil, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := newTestCache[string](t, s, steady(append(tc.opts, WithEncryption(testRing(t)))...)...)
				sk := c.cfg.prefix + "k"
				var loads atomic.Int32
				gen := 0
				load := func(context.Context) (string, error) {
					loads.Add(1)
					if tc.v == "" {
						return "", ErrNotFound
					}
					return fmt.Sprint(tc.v, gen), nil
				}
				_, err := c.GetOrLoad(bg(), "k", load)
				require.True(t, err == nil || errors.Is(err, ErrNotFound))
				frame := storedFrame(t, s, sk)
				h, _, ok := envelope.Decode(frame, c.entries.schema)
				require.True(t, ok)
				require.True(t, h.Encrypted())
				require.Equal(t, tc.v == "", h.NotFound())
				require.Equal(t, len(tc.opts) > 0, h.Compressed())

				for i := range frame {
					for _, mask := range []byte{1 << (i % 8), 0xFF} {
						gen++
						frame = storedFrame(t, s, sk)
						bad := bytes.Clone(frame)
						bad[i] ^= mask
						putFrame(t, b, raw, s, sk, bad)
						before, rejected := loads.Load(), c.rejected()
						v, err := c.GetOrLoad(bg(), "k", load)
						if tc.v == "" {
							require.ErrorIs(t, err, ErrNotFound)
						} else {
							require.NoError(t, err, "byte %d ^ %#x", i, mask)
							require.Equal(t, fmt.Sprint(tc.v, gen), v, "byte %d ^ %#x: the reloaded value", i, mask)
						}
						require.Equal(t, before+1, loads.Load(), "byte %d ^ %#x: reloaded", i, mask)
						require.Equal(t, rejected+1, c.rejected(), "byte %d ^ %#x: counted", i, mask)
						require.Equal(t, rejected+1, c.Stats().UndecodableValues, "byte %d ^ %#x: in Stats", i, mask)
						require.NotEqual(t, bad, storedFrame(t, s, sk), "byte %d ^ %#x: replaced", i, mask)
					}
				}
			})
		}
	})
}

// A sealed value copied to another key does not open there: the key is authenticated with it.
func TestMovedValueIsAMiss(t *testing.T) {
	tamperBackends(t, func(t *testing.T, b backend, s Store, raw rawWriter) {
		c := newTestCache[string](t, s, steady(WithEncryption(testRing(t)))...)
		for _, from := range []string{"a", "gone"} {
			_, _ = c.GetOrLoad(bg(), from, func(context.Context) (string, error) {
				if from == "gone" {
					return "", ErrNotFound
				}
				return "value of " + from, nil
			})
		}
		// b: a value moved over another; gone2: a not-found moved to a key that exists.
		for from, to := range map[string]string{"a": "b", "gone": "gone2"} {
			putFrame(t, b, raw, s, c.cfg.prefix+to, storedFrame(t, s, c.cfg.prefix+from))
			rejected := c.rejected()
			v, err := c.GetOrLoad(bg(), to, func(context.Context) (string, error) { return "value of " + to, nil })
			require.NoError(t, err)
			require.Equal(t, "value of "+to, v)
			require.Equal(t, rejected+1, c.rejected())
		}
		// Another prefix is another key too.
		other := newTestCache[string](t, s, steady(WithEncryption(c.entries.wire.ring))...)
		putFrame(t, b, raw, s, other.cfg.prefix+"a", storedFrame(t, s, c.cfg.prefix+"a"))
		v, err := other.GetOrLoad(bg(), "a", func(context.Context) (string, error) { return "reloaded", nil })
		require.NoError(t, err)
		require.Equal(t, "reloaded", v)
	})
}

// A cache with encryption reads no unencrypted value (nobody who can write to the store can
// plant one), and a cache without it reads no encrypted value: each is a miss, replaced.
// Compression settings, by contrast, change freely: every cache reads compressed and plain
// values alike.
func TestWireSettingsChange(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		prefix := testPrefix(t)
		ring := testRing(t)
		mk := func(opts ...Option) *Cache[string] {
			return newTestCache[string](t, s, steady(append([]Option{WithPrefix(prefix)}, opts...)...)...)
		}
		plain, sealed := mk(WithCompression(0)), mk(WithEncryption(ring))
		compressing, sealedCompressing := mk(WithCompression(1)), mk(WithCompression(1), WithEncryption(ring))
		big := strings.Repeat("compressible ", 100)

		var loads atomic.Int32
		read := func(c *Cache[string], key, want string) {
			t.Helper()
			v, err := c.GetOrLoad(bg(), key, func(context.Context) (string, error) { loads.Add(1); return want, nil })
			require.NoError(t, err)
			require.Equal(t, want, v)
		}
		expect := func(n int32, what string) {
			t.Helper()
			require.Equal(t, n, loads.Swap(0), what)
		}

		read(plain, "k", big)
		read(sealed, "k", big)
		expect(2, "a plain value is a miss for an encrypting cache")
		require.Equal(t, uint64(1), sealed.entries.wire.rejects[rejectPlain].Load())
		require.Equal(t, uint64(1), sealed.Stats().UnopenedValues)
		read(sealed, "k", big)
		read(sealedCompressing, "k", big)
		expect(0, "sealed by a cache of the same ring: read by both")
		read(plain, "k", big)
		expect(1, "an encrypted value is a miss for a cache without encryption")
		require.Equal(t, uint64(1), plain.entries.wire.rejects[rejectSealed].Load())

		read(compressing, "c", big)
		read(plain, "c", big)
		expect(1, "a compressed value is read by a cache with compression off")
		read(sealedCompressing, "sc", big)
		read(sealed, "sc", big)
		expect(1, "a sealed compressed value is read by an encrypting cache with compression off")
		for _, k := range []string{"c", "sc"} {
			h, _, ok := envelope.Decode(storedFrame(t, s, prefix+k), plain.entries.schema)
			require.True(t, ok)
			require.True(t, h.Compressed(), k)
		}

		// Another key ring is another secret: its values are misses.
		otherRing := mk(WithEncryption(testRing(t)))
		read(otherRing, "sc", big)
		expect(1, "sealed with a key of another ring (same id)")
	})
}

// Changing the codec or the type behind a prefix makes old entries misses, not garbage.
func TestCodecChangeIsAMiss(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		prefix := testPrefix(t)
		opts := steady(WithPrefix(prefix))
		asJSON := newTestCache[wireDoc](t, s, opts...)
		asMsgpack := newTestCache[wireDoc](t, s, append(opts, WithCodec(msgpackcodec.Codec{}))...)
		asRaw := newTestCache[string](t, s, append(opts, WithCodec(RawCodec{}))...)
		asJSONString := newTestCache[string](t, s, opts...)

		var loads atomic.Int32
		doc := smallDoc()
		loadDoc := func(context.Context) (wireDoc, error) { loads.Add(1); return doc, nil }
		loadString := func(context.Context) (string, error) { loads.Add(1); return `"raw"`, nil }

		_, err := asJSON.GetOrLoad(bg(), "k", loadDoc)
		require.NoError(t, err)
		got, err := asMsgpack.GetOrLoad(bg(), "k", loadDoc)
		require.NoError(t, err)
		require.Equal(t, doc.Tags, got.Tags)
		require.EqualValues(t, 2, loads.Swap(0), "JSON then msgpack: a miss")
		v, err := asRaw.GetOrLoad(bg(), "k", loadString)
		require.NoError(t, err)
		require.Equal(t, `"raw"`, v)
		v, err = asJSONString.GetOrLoad(bg(), "k", loadString)
		require.NoError(t, err)
		require.Equal(t, `"raw"`, v, "raw bytes that happen to be JSON are not read as JSON")
		require.EqualValues(t, 2, loads.Swap(0))
		require.Equal(t, uint64(1), asJSONString.entries.wire.rejects[rejectFrame].Load())
	})
}

// A compressed value whose header claims a huge size is a miss before anything that size is
// allocated; so is one that claims a size within the limit but does not decompress.
func TestDecompressionIsBounded(t *testing.T) {
	c := newTestCache[[]byte](t, NewMemoryStore(), WithCodec(RawCodec{}))
	header := func(flags envelope.Flags) []byte {
		return envelope.AppendHeader(nil, envelope.Header{Flags: flags, Schema: c.entries.schema})
	}
	huge := binary.AppendUvarint([]byte{tagS2}, 1<<32) // claims 4 GiB
	huge = append(huge, 0, 1, 2, 3)
	justOver := binary.AppendUvarint([]byte{tagS2}, uint64(c.entries.wire.maxDecoded+1))
	garbage := binary.AppendUvarint([]byte{tagS2}, 1000)
	garbage = append(garbage, bytes.Repeat([]byte{0xFF}, 20)...)
	valid, ok := compress(nil, bytes.Repeat([]byte("x"), 5000), 0)
	require.True(t, ok)
	for name, payload := range map[string][]byte{
		"huge":      huge,
		"just over": justOver,
		"garbage":   garbage,
		"no tag":    valid[1:],
		"other tag": append([]byte{2}, valid[1:]...),
		"empty":     nil,
		"truncated": valid[:len(valid)-1],
	} {
		frame := append(header(envelope.FlagCompressed), payload...)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, ok := c.entries.decode("k", frame)
		runtime.ReadMemStats(&after)
		require.False(t, ok, name)
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<10), "%s: allocated", name)
	}
	require.Equal(t, uint64(7), c.entries.wire.rejects[rejectCompressed].Load())
	v, _, ok := c.entries.decode("k", append(header(envelope.FlagCompressed), valid...))
	require.True(t, ok)
	require.Equal(t, 5000, len(v))

	// Without a max value size, decompression is still bounded.
	unbounded := newTestCache[[]byte](t, NewMemoryStore(), WithCodec(RawCodec{}), WithMaxValueSize(0))
	require.Equal(t, maxUnboundedDecoded, unbounded.entries.wire.maxDecoded)
	_, _, ok = unbounded.entries.decode("k", append(header(envelope.FlagCompressed), huge...))
	require.False(t, ok)
}

// The max value size bounds a value before compression too, so that what a hit decompresses is
// bounded by it; a value that only fits compressed is not stored.
func TestMaxValueSizeBeforeCompression(t *testing.T) {
	c := newTestCache[string](t, NewMemoryStore(), WithCodec(RawCodec{}), WithMaxValueSize(4096), WithCompression(1))
	var loads atomic.Int32
	for _, n := range []int{4096 - envelope.HeaderSize, 4096 - envelope.HeaderSize + 1} {
		v := strings.Repeat("z", n)
		for range 2 {
			_, err := c.GetOrLoad(bg(), fmt.Sprint(n), func(context.Context) (string, error) { loads.Add(1); return v, nil })
			require.NoError(t, err)
		}
	}
	require.EqualValues(t, 3, loads.Load(), "the first fits and is stored; the second is not")
}

func TestCompressRoundTrip(t *testing.T) {
	for _, n := range []int{1, 100, 4 << 10, 1 << 20} {
		p := bytes.Repeat([]byte("abcdefgh"), n/8+1)[:n]
		c, ok := compress([]byte("room"), p, 10)
		if n < 64 {
			continue // may not save an eighth
		}
		require.True(t, ok, n)
		require.Equal(t, "room", string(c[:4]))
		require.GreaterOrEqual(t, cap(c)-len(c), 10)
		d, ok := decompress(c[4:], n)
		require.True(t, ok)
		require.Equal(t, p, d)
		_, ok = decompress(c[4:], n-1)
		require.False(t, ok, "over the limit")
		require.Equal(t, tagS2, c[4])
		_, err := s2.Decode(nil, c[5:])
		require.NoError(t, err, "an S2 block after the tag")
	}
}
