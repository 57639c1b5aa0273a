package cacheaside

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMemoryStoreDeletePatternHonoursContext: the walk over keys stops at a done context and
// deletes nothing after it.
func TestMemoryStoreDeletePatternHonoursContext(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	for i := range 50 {
		stPut(t, s, fmt.Sprintf("k:%d", i), []byte("v"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n, err := s.DeletePattern(ctx, "k:*")
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, n)
	for i := range 50 {
		require.NotNil(t, s.peek(fmt.Sprintf("k:%d", i)), "a key was deleted after the context ended")
	}
}

// TestMemoryStoreDeletePatternPathological: a pattern that made the old backtracking matcher
// run for minutes per key (CVE-2022-36021 in Redis) costs next to nothing per key now. The
// bound only catches a hang.
func TestMemoryStoreDeletePatternPathological(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	for i := range 20 {
		stPut(t, s, fmt.Sprintf("%s%02d", strings.Repeat("a", 40), i), []byte("v"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := s.DeletePattern(ctx, strings.Repeat("*a", 10)+"*b")
	require.NoError(t, err, "DeletePattern did not finish in 60 s")
	require.Zero(t, n)
}
