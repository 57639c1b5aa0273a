package cacheaside

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every Cache stops its own in
// Close, every store and client is closed at cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-redis's process-wide helpers, started once and kept for the process.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
		// otter's clean-up goroutine of a MemoryStore nobody closed (the examples pass one
		// straight to New): it returns by itself once the store is garbage.
		goleak.IgnoreAnyFunction("github.com/maypok86/otter/v2.periodicCleanUp[...]"),
	)
}
