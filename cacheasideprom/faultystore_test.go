package cacheasideprom

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/stretchr/testify/require"
)

// errInjected is what a faultyStore answers while it fails.
var errInjected = errors.New("dial tcp 127.0.0.1:1: connect: connection refused")

// faultyStore is a MemoryStore that fails every operation while fail is set. Being no
// *MemoryStore itself, it counts as a store with round trips: its durations are measured.
type faultyStore struct {
	*cacheaside.MemoryStore
	Peek struct{} // hides MemoryStore.Peek (InProcessStore): every read goes through the methods below
	fail atomic.Bool
}

func newFaultyStore(t testing.TB) *faultyStore {
	s := &faultyStore{MemoryStore: cacheaside.NewMemoryStore()}
	t.Cleanup(func() { s.MemoryStore.Close() })
	return s
}

func (s *faultyStore) err() error {
	if s.fail.Load() {
		return errInjected
	}
	return nil
}

func (s *faultyStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (cacheaside.Lookup, error) {
	if err := s.err(); err != nil {
		return cacheaside.Lookup{}, err
	}
	return s.MemoryStore.GetOrLease(ctx, key, token, leaseTTL)
}

func (s *faultyStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]cacheaside.Lookup, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.MemoryStore.GetOrLeaseMany(ctx, keys, token, leaseTTL)
}

func (s *faultyStore) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (cacheaside.Lookup, error) {
	if err := s.err(); err != nil {
		return cacheaside.Lookup{}, err
	}
	return s.MemoryStore.Lease(ctx, key, token, leaseTTL)
}

func (s *faultyStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	if err := s.err(); err != nil {
		return false, err
	}
	return s.MemoryStore.Fill(ctx, key, token, value, ttl)
}

func (s *faultyStore) FillMany(ctx context.Context, token string, entries []cacheaside.FillEntry) ([]bool, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.MemoryStore.FillMany(ctx, token, entries)
}

func (s *faultyStore) Release(ctx context.Context, key, token string) (bool, error) {
	if err := s.err(); err != nil {
		return false, err
	}
	return s.MemoryStore.Release(ctx, key, token)
}

func (s *faultyStore) Delete(ctx context.Context, keys ...string) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.Delete(ctx, keys...)
}

func (s *faultyStore) DeletePattern(ctx context.Context, pattern string) (int, error) {
	if err := s.err(); err != nil {
		return 0, err
	}
	return s.MemoryStore.DeletePattern(ctx, pattern)
}

func (s *faultyStore) Ping(ctx context.Context) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.Ping(ctx)
}

// putGarbage stores bytes that are no entry of any cache at sk, through the store's lease.
func putGarbage(t testing.TB, s cacheaside.Store, sk string) {
	t.Helper()
	lk, err := s.Lease(bg(), sk, "garbage-writer", time.Minute)
	require.NoError(t, err)
	require.True(t, lk.Granted)
	ok, err := s.Fill(bg(), sk, "garbage-writer", []byte("not an envelope"), time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
}
