package cacheaside

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// peekStore is a third-party in-process store: MemoryStore's methods behind the Store
// interface, plus its own Peek.
type peekStore struct {
	Store
	m     *MemoryStore
	peeks atomic.Int64
}

func (p *peekStore) Peek(key string) []byte { p.peeks.Add(1); return p.m.Peek(key) }

var _ InProcessStore = (*peekStore)(nil)

// A Cache finds out that its store is in process through InProcessStore, not its type: hits go
// through Peek, and lookups are neither timed nor coalesced; a store without it gets both.
func TestInProcessStoreByInterface(t *testing.T) {
	m := NewMemoryStore()
	defer m.Close()
	ps := &peekStore{Store: m, m: m}
	c := newTestCache[string](t, ps)
	require.NotNil(t, c.gw.mem)
	require.Nil(t, c.lookups, "no lookup coalescing for an in-process store")
	for range 3 {
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v", nil })
		require.NoError(t, err)
		require.Equal(t, "v", v)
	}
	require.GreaterOrEqual(t, ps.peeks.Load(), int64(2), "hits are peeked")
	require.EqualValues(t, 2, c.Stats().Hits)

	hidden := newTestCache[string](t, struct{ Store }{m})
	require.Nil(t, hidden.gw.mem)
	require.NotNil(t, hidden.lookups)
}

// reusingStore hands out reads in buffers it reuses (ValueBytesStore not implemented): every
// read's bytes are overwritten by the next read, or by scribble.
type reusingStore struct {
	Store
	mu   sync.Mutex
	bufs [][]byte
}

func (r *reusingStore) GetOrLease(ctx context.Context, key, token string, ttl time.Duration) (Lookup, error) {
	lk, err := r.Store.GetOrLease(ctx, key, token, ttl)
	if lk.Value != nil {
		lk.Value = bytes.Clone(lk.Value)
		r.mu.Lock()
		r.bufs = append(r.bufs, lk.Value)
		r.mu.Unlock()
	}
	return lk, err
}

func (r *reusingStore) scribble() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bufs {
		for i := range b {
			b[i] = 'X'
		}
	}
}

// A store that does not say its reads are immutable gets no decoded value sharing memory with
// them; the built-in stores say so, and RawCodec strings then share (no copy).
func TestValueBytesStoreDefaultsToCopies(t *testing.T) {
	m := NewMemoryStore()
	defer m.Close()
	rs := &reusingStore{Store: m}
	c := newTestCache[string](t, rs, WithCodec(RawCodec{}), WithCompression(0))
	require.Equal(t, borrowed, c.entries.wire.own)
	require.True(t, c.entries.wire.keepsBytes)
	load := func(context.Context) (string, error) { return "the value", nil }
	_, err := c.GetOrLoad(bg(), "k", load)
	require.NoError(t, err)
	v, err := c.GetOrLoad(bg(), "k", load) // a hit, decoded from a buffer the store reuses
	require.NoError(t, err)
	require.EqualValues(t, 1, c.Stats().Hits)
	rs.scribble()
	require.Equal(t, "the value", v)

	require.Equal(t, immutable, newTestCache[string](t, m).entries.wire.own)
	require.True(t, newTestCache[string](t, m).entries.wire.keepsBytes)
	rds := NewRedisStore(nil)
	require.Equal(t, immutable, newWire(defaultConfig(), rds).own)
	require.False(t, newWire(defaultConfig(), rds).keepsBytes)
}
