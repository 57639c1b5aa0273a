package cacheaside

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

type inspected struct {
	Name string `json:"name"`
}

// TestInspect: Inspect reports value, size, TTL, lease, not-found and bad data as the store
// holds them, on every store, and changes nothing (no lease, no counter).
func TestInspect(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		store := b.newStore(t)
		c := newTestCache[inspected](t, store, append(b.opts, WithTTL(time.Minute), WithNegativeTTL(time.Minute))...)
		ctx := bg()

		info, err := c.Inspect(ctx, "absent")
		if err != nil {
			t.Fatal(err)
		}
		if info.Present || info.Value || info.Lease || info.Hit() || info.StoreKey != c.cfg.prefix+"absent" {
			t.Fatalf("absent key: %+v", info)
		}

		if _, err := c.GetOrLoad(ctx, "k", func(context.Context) (inspected, error) { return inspected{"Ada"}, nil }); err != nil {
			t.Fatal(err)
		}
		before := c.Stats()
		info, v, err := c.InspectValue(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if !info.Present || !info.Value || !info.Decoded || !info.Fresh || !info.Hit() || info.Lease || info.NotFound || info.Codec != "json" {
			t.Fatalf("cached key: %+v", info)
		}
		if info.TTL <= 0 || info.TTL > time.Minute {
			t.Fatalf("TTL %v, want in (0, 1m]", info.TTL)
		}
		if left := time.Until(info.Expiry); left <= 0 || left > time.Minute {
			t.Fatalf("logical expiry in %v, want in (0, 1m]", left)
		}
		if got, ok := v.(inspected); !ok || got.Name != "Ada" {
			t.Fatalf("value %#v", v)
		}
		if b.client != nil {
			raw, err := b.client(t).HGet(ctx, info.StoreKey, "v").Result()
			if err != nil {
				t.Fatal(err)
			}
			if info.Size != len(raw) {
				t.Fatalf("size %d, stored %d bytes", info.Size, len(raw))
			}
		} else if info.Size <= len(`{"name":"Ada"}`) {
			t.Fatalf("size %d does not count the envelope", info.Size)
		}
		if _, v, err = c.InspectValue(ctx, "k"); err != nil || v == nil {
			t.Fatalf("second look: %v %v", v, err)
		}
		if after := c.Stats(); after != before {
			t.Fatalf("Inspect moved the counters:\n%+v\n%+v", before, after)
		}
		if info, err := c.Inspect(ctx, "k"); err != nil || !info.Decoded {
			t.Fatalf("Inspect without the value: %+v %v", info, err)
		}

		// A lease held by a load in another process: reported, neither taken nor released.
		sk := c.cfg.prefix + "leased"
		if lk, err := store.GetOrLease(ctx, sk, "other-process", time.Minute); err != nil || !lk.Granted {
			t.Fatalf("lease: %+v %v", lk, err)
		}
		info, err = c.Inspect(ctx, "leased")
		if err != nil {
			t.Fatal(err)
		}
		if !info.Present || info.Value || !info.Lease || info.LeaseTTL <= 0 || info.LeaseTTL > time.Minute || info.Hit() {
			t.Fatalf("leased key: %+v", info)
		}
		if lk, err := store.GetOrLease(ctx, sk, "someone-else", time.Minute); err != nil || lk.Holder != "other-process" {
			t.Fatalf("after Inspect the lease is not the other process's: %+v %v", lk, err)
		}
		// A lease guarding the refresh of a present value.
		if lk, err := store.Lease(ctx, c.cfg.prefix+"k", "refresher", time.Minute); err != nil || !lk.Granted {
			t.Fatalf("refresh lease: %+v %v", lk, err)
		}
		if info, err = c.Inspect(ctx, "k"); err != nil || !info.Lease || !info.Decoded || info.LeaseTTL <= 0 {
			t.Fatalf("refreshing key: %+v %v", info, err)
		}

		// A cached not-found.
		if _, err := c.GetOrLoad(ctx, "gone", func(context.Context) (inspected, error) { return inspected{}, ErrNotFound }); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		info, v, err = c.InspectValue(ctx, "gone")
		if err != nil || !info.NotFound || !info.Decoded || !info.Hit() || v != nil {
			t.Fatalf("not-found: %+v %v %v", info, v, err)
		}

		// Bytes that do not decode: reported with a reason, not counted.
		bad := c.cfg.prefix + "bad"
		if lk, err := store.GetOrLease(ctx, bad, "tok", time.Minute); err != nil || !lk.Granted {
			t.Fatal(lk, err)
		}
		if ok, err := store.Fill(ctx, bad, "tok", []byte("garbage"), time.Minute); err != nil || !ok {
			t.Fatal(ok, err)
		}
		before = c.Stats()
		info, v, err = c.InspectValue(ctx, "bad")
		if err != nil || !info.Value || info.Decoded || info.Undecodable == "" || info.Hit() || v != nil || info.Size != len("garbage") {
			t.Fatalf("bad data: %+v %v %v", info, v, err)
		}
		if after := c.Stats(); after != before {
			t.Fatalf("Inspect of bad data moved the counters:\n%+v\n%+v", before, after)
		}

		// A key of another type (Redis only): reported, and left in place.
		if b.client != nil {
			cl := b.client(t)
			fk := c.cfg.prefix + "foreign"
			if err := cl.Set(ctx, fk, "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
			info, err = c.Inspect(ctx, "foreign")
			if err != nil || !info.Foreign || !info.Present || info.Value || info.TTL >= 0 {
				t.Fatalf("foreign key: %+v %v", info, err)
			}
			if n, err := cl.Exists(ctx, fk).Result(); err != nil || n != 1 {
				t.Fatalf("Inspect removed the foreign key: %d %v", n, err)
			}
			cl.Del(ctx, fk)
		}
	})
}

// TestInspectEncrypted: an encrypted cache decodes its own values; a cache without the key
// ring says why it cannot.
func TestInspectEncrypted(t *testing.T) {
	store := NewMemoryStore()
	defer store.Close()
	ring, err := NewKeyRing(1, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	prefix := testPrefix(t)
	sealed := newTestCache[inspected](t, store, WithPrefix(prefix), WithEncryption(ring))
	plain := newTestCache[inspected](t, store, WithPrefix(prefix))
	if _, err := sealed.GetOrLoad(bg(), "k", func(context.Context) (inspected, error) { return inspected{"x"}, nil }); err != nil {
		t.Fatal(err)
	}
	if info, err := sealed.Inspect(bg(), "k"); err != nil || !info.Decoded || !info.Encrypted {
		t.Fatalf("sealed cache: %+v %v", info, err)
	}
	if info, err := plain.Inspect(bg(), "k"); err != nil || info.Decoded || !strings.Contains(info.Undecodable, "key ring") {
		t.Fatalf("plain cache: %+v %v", info, err)
	}
}

// opaqueStore is a Store without InspectStore.
type opaqueStore struct{ Store }

func TestInspectUnsupported(t *testing.T) {
	mem := NewMemoryStore()
	defer mem.Close()
	c := newTestCache[string](t, opaqueStore{mem})
	if _, err := c.Inspect(bg(), "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("err %v, want errors.ErrUnsupported", err)
	}
	if c.Info().Inspectable {
		t.Fatal("Info says an opaque store is inspectable")
	}
}

func TestInfo(t *testing.T) {
	mem := NewMemoryStore()
	defer mem.Close()
	c := newTestCache[[]byte](t, mem, WithPrefix("info:"), WithCodec(RawCodec{}), WithTTL(time.Hour), WithNegativeTTL(0), WithLocalCache(10, time.Second))
	got := c.Info()
	want := CacheInfo{Prefix: "info:", Type: "[]uint8", Codec: RawCodec{}.Name(), Store: "*cacheaside.MemoryStore", TTL: time.Hour,
		LocalCache: 10, CompressAt: DefaultCompressionThreshold, Inspectable: true}
	if got != want {
		t.Fatalf("Info:\n got %+v\nwant %+v", got, want)
	}
	c.Close()
	if _, err := c.Inspect(bg(), "k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Inspect after Close: %v", err)
	}
}

// TestInspectL1: a key held in this instance's local cache is reported, and no longer once
// invalidated.
func TestInspectL1(t *testing.T) {
	store := NewMemoryStore()
	defer store.Close()
	c := newTestCache[string](t, store, WithLocalCache(100, time.Minute))
	ld := func(context.Context) (string, error) { return "v", nil }
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.GetOrLoad(bg(), "k", ld); err != nil {
			t.Fatal(err)
		}
		info, err := c.Inspect(bg(), "k")
		if err != nil {
			t.Fatal(err)
		}
		if info.L1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the key never showed in the local cache (subscription never live?)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Invalidate(bg(), "k"); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Inspect(bg(), "k"); err != nil || info.L1 || info.Hit() {
		t.Fatalf("after Invalidate: %+v %v", info, err)
	}
}
