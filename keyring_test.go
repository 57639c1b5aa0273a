package cacheaside

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/stretchr/testify/require"
)

func TestKeyRing(t *testing.T) {
	key := testKey(t)
	for _, n := range []int{0, 16, 24, 31, 33, 64} {
		_, err := NewKeyRing(1, key[:min(n, len(key))])
		if n > len(key) {
			_, err = NewKeyRing(1, append(bytes.Clone(key), make([]byte, n-len(key))...))
		}
		require.ErrorIs(t, err, ErrInvalidOption, "%d bytes", n)
	}
	r, err := NewKeyRing(7, key)
	require.NoError(t, err)
	require.Equal(t, uint32(7), r.Primary())
	require.ErrorIs(t, r.Add(7, testKey(t)), ErrInvalidOption, "duplicate id")
	require.ErrorIs(t, r.Add(8, key[:16]), ErrInvalidOption, "short key")
	require.NoError(t, r.Add(8, testKey(t)))
	require.Equal(t, []uint32{7, 8}, r.IDs())
	require.Equal(t, uint32(7), r.Primary(), "Add does not change the primary")
	require.ErrorIs(t, r.Use(9), ErrInvalidOption)
	require.ErrorIs(t, r.Remove(7), ErrInvalidOption, "the primary")
	require.ErrorIs(t, r.Remove(9), ErrInvalidOption)
	require.NoError(t, r.Use(8))
	require.NoError(t, r.Remove(7))
	require.Equal(t, []uint32{8}, r.IDs())

	var zero KeyRing
	require.Error(t, zero.Add(1, key))
	require.Nil(t, zero.IDs())
	for _, ring := range []*KeyRing{nil, &zero} {
		_, err = New[string](NewMemoryStore(), WithEncryption(ring))
		require.ErrorIs(t, err, ErrInvalidOption)
	}
	_, err = New[string](NewMemoryStore(), WithCompression(-1))
	require.ErrorIs(t, err, ErrInvalidOption)
}

// A key never shows in fmt output of the ring (every verb, directly or inside a struct), nor
// in an error.
func TestKeysNeverPrinted(t *testing.T) {
	key := bytes.Repeat([]byte{0xAB, 0xCD}, KeySize/2)
	r, err := NewKeyRing(1, key)
	require.NoError(t, err)
	_, err = NewKeyRing(2, key[:31])
	errText := err.Error()
	err = r.Add(3, append(bytes.Clone(key), 0xAB))
	errText += err.Error()
	type holder struct {
		Ring    *KeyRing
		private *KeyRing
	}
	var out strings.Builder
	for _, v := range []any{r, holder{r, r}, &holder{r, r}, []*KeyRing{r}, map[string]any{"ring": r}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
	}
	out.WriteString(errText)
	text := out.String()
	for _, enc := range []string{string(key), hex.EncodeToString(key), strings.ToUpper(hex.EncodeToString(key)),
		base64.StdEncoding.EncodeToString(key), string(key), "abcdabcd", "171 205", "0xab"} {
		require.NotContains(t, text, enc)
	}
	require.Contains(t, r.String(), "primary: 1")
}

// Keys rotate while readers on several instances go on: values sealed with the old key open
// until it is removed from the rings, then they are misses, reloaded once each and sealed
// with the new key. No reader ever sees an error or a wrong value.
func TestKeyRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		const n, keys = 3, 16
		k1, k2 := testKey(t), testKey(t)
		prefix := testPrefix(t)
		rings := make([]*KeyRing, n)
		caches := make([]*Cache[string], n)
		for i := range caches {
			var err error
			rings[i], err = NewKeyRing(1, k1)
			require.NoError(t, err)
			caches[i] = backendCache[string](t, b, append(slowMachine, WithPrefix(prefix), WithEncryption(rings[i]))...)
		}
		var loads [keys]atomic.Int32
		load := func(k int) func(context.Context) (string, error) {
			return func(context.Context) (string, error) {
				loads[k].Add(1)
				return fmt.Sprint("value-", k), nil
			}
		}
		for k := range keys {
			_, err := caches[0].GetOrLoad(bg(), fmt.Sprint(k), load(k))
			require.NoError(t, err)
		}

		var reads atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := i % keys
					v, err := caches[i%n].GetOrLoad(bg(), fmt.Sprint(k), load(k))
					if err != nil || v != fmt.Sprint("value-", k) {
						t.Errorf("read %d on instance %d: %q, %v", k, i%n, v, err)
						return
					}
					reads.Add(1)
				}
			}()
		}
		defer func() { close(stop); wg.Wait() }()
		readsGoOn := func() { // let every reader make progress between steps
			t.Helper()
			target := reads.Load() + 100
			within(t, 30*time.Second, "100 reads", func() {
				for reads.Load() < target && !t.Failed() {
					runtime.Gosched()
				}
			})
		}
		s := b.newStore(t)
		var raw rawWriter
		if b.client != nil {
			raw = b.client(t)
		}
		// keyIDs counts the stored values by the id of the key that sealed them, once every key
		// holds a value (the readers refill invalidated keys).
		keyIDs := func() map[uint32]int {
			t.Helper()
			deadline := time.Now().Add(30 * time.Second)
			for {
				ids := map[uint32]int{}
				for k := range keys {
					if f := peekFrame(t, raw, s, prefix+fmt.Sprint(k)); len(f) >= sealedAt {
						ids[binary.BigEndian.Uint32(f[envelope.HeaderSize:])]++
					}
				}
				if ids[1]+ids[2] == keys {
					return ids
				}
				require.True(t, time.Now().Before(deadline), "keys left empty: %v", ids)
				readsGoOn()
			}
		}

		readsGoOn()
		for _, r := range rings {
			require.NoError(t, r.Add(2, k2))
			readsGoOn()
		}
		for _, r := range rings {
			require.NoError(t, r.Use(2))
			readsGoOn()
		}
		for k := range keys {
			require.EqualValues(t, 1, loads[k].Load(), "key %d: values sealed with key 1 still open", k)
		}
		require.Equal(t, map[uint32]int{1: keys}, keyIDs())

		// New fills use key 2, and every instance opens them.
		require.NoError(t, caches[0].Invalidate(bg(), "0", "1", "2", "3"))
		require.Equal(t, map[uint32]int{1: keys - 4, 2: 4}, keyIDs())
		readsGoOn()
		for _, c := range caches {
			require.Zero(t, c.rejected())
		}
		for k := range keys {
			want := 1
			if k < 4 {
				want = 2
			}
			require.EqualValues(t, want, loads[k].Load(), "key %d", k)
		}

		// Once key 1 is gone, its values are misses and get replaced, sealed with key 2. (A
		// reader that read an old value just before another instance replaced it may replace
		// it once more: loads are at least one more per key, not exactly.)
		for _, r := range rings {
			require.NoError(t, r.Remove(1))
			readsGoOn()
		}
		deadline := time.Now().Add(30 * time.Second)
		for keyIDs()[2] != keys {
			require.True(t, time.Now().Before(deadline), "old values not replaced: %v", keyIDs())
			readsGoOn()
		}
		for k := 4; k < keys; k++ {
			require.GreaterOrEqual(t, loads[k].Load(), int32(2), "key %d: reloaded", k)
		}
		var sealed uint64
		for _, c := range caches {
			sealed += c.entries.wire.rejects[rejectSealed].Load()
		}
		require.GreaterOrEqual(t, sealed, uint64(keys-4), "old values read as misses")
	})
}
