package cacheaside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// logBuffer is a slog JSON handler's output, safe for concurrent writes, read back as records.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &r), line)
		out = append(out, r)
	}
	return out
}

func newLogBuffer() (*logBuffer, *slog.Logger) {
	b := &logBuffer{}
	return b, slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// storeFailureLines returns the store failure records and the failures they account for
// (each line is one failure plus the ones it reports as suppressed).
func storeFailureLines(t *testing.T, b *logBuffer) (lines int, failures uint64) {
	for _, r := range b.records(t) {
		if strings.HasPrefix(r["msg"].(string), "cacheaside: store operation failed") {
			require.Equal(t, "WARN", r["level"])
			lines++
			failures += 1 + uint64(r["suppressed"].(float64))
		}
	}
	return lines, failures
}

// An outage of 1000 failing store operations logs a handful of lines, and every failure is
// accounted for by a line or its suppressed count.
func TestLoggingRateLimited(t *testing.T) {
	b, logger := newLogBuffer()
	store := newFaultyStore(t)
	// A breaker that never opens: every call goes to the store and fails.
	c := newTestCache[string](t, store, WithLogger(logger), WithCircuitBreaker(1<<30, time.Hour))
	_, err := c.GetOrLoad(bg(), "warm", constLoad("v"))
	require.NoError(t, err)
	require.Empty(t, b.String(), "nothing is logged on a miss or a hit")
	for range 10 {
		_, err = c.GetOrLoad(bg(), "warm", constLoad("v"))
		require.NoError(t, err)
	}
	require.Empty(t, b.String(), "nothing is logged on hits")

	store.fail.Store(true)
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				_, err := c.GetOrLoad(bg(), fmt.Sprint("k", g, ":", i), constLoad("v"))
				if err != nil {
					t.Error(err)
				}
				_, _ = c.GetOrLoadMany(bg(), []string{fmt.Sprint("m", g, ":", i)}, func(context.Context, []string) (map[string]string, error) {
					return nil, nil
				})
			}
		}()
	}
	wg.Wait()
	stPoll(t, 10*time.Second, time.Millisecond, "background fills", func() bool {
		return c.Stats().StoreErrors >= 1000
	})
	lines, _ := storeFailureLines(t, b)
	t.Logf("%d store failures, %d lines:\n%s", c.Stats().StoreErrors, lines, b.String())
	require.GreaterOrEqual(t, lines, 1)
	require.LessOrEqual(t, lines, 3, "a handful of lines for 1000 failures")
}

// With a short interval, every failure is accounted for: logged, or counted as suppressed
// in a later line.
func TestLoggingSuppressedCount(t *testing.T) {
	b, logger := newLogBuffer()
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithLogger(logger), withLogInterval(20*time.Millisecond), WithCircuitBreaker(1<<30, time.Hour),
		WithInvalidateTimeout(time.Nanosecond)) // one attempt: one failed store operation per Invalidate
	_, err := c.GetOrLoad(bg(), "warm", constLoad("v"))
	require.NoError(t, err)
	store.fail.Store(true)
	fail := func(n int) {
		for i := range n {
			require.Error(t, c.Invalidate(bg(), fmt.Sprint("k", i))) // one failed store operation each
		}
	}
	fail(200)
	time.Sleep(30 * time.Millisecond)
	fail(1) // past the interval: a line that reports what was suppressed
	lines, failures := storeFailureLines(t, b)
	require.GreaterOrEqual(t, lines, 2)
	require.EqualValues(t, 201, failures, "lines and suppressed counts add up to every failure:\n%s", b.String())
	require.EqualValues(t, 201, c.Stats().StoreErrors)
	for _, r := range b.records(t) {
		require.Equal(t, "delete", r["op"])
		require.Equal(t, c.cfg.prefix, r["cache"])
		require.Equal(t, errInjected.Error(), r["error"])
	}
}

// Breaker transitions are logged at Warn, once each; recovery reports the failures not
// logged since the last line.
func TestLoggingBreaker(t *testing.T) {
	b, logger := newLogBuffer()
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithLogger(logger), WithCircuitBreaker(3, 5*time.Millisecond))
	_, err := c.GetOrLoad(bg(), "warm", constLoad("v"))
	require.NoError(t, err)
	store.fail.Store(true)
	for i := range 20 {
		_, err := c.GetOrLoad(bg(), fmt.Sprint("k", i), constLoad("v"))
		require.NoError(t, err)
	}
	require.True(t, c.Stats().BreakerOpen)
	store.fail.Store(false)
	stPoll(t, 10*time.Second, time.Millisecond, "breaker closes", func() bool { return !c.Stats().BreakerOpen })
	// The transition is logged by the goroutine that closed the breaker, just after the state
	// flips: wait for the line rather than racing it.
	breakerLines := func() []string {
		var msgs []string
		for _, r := range b.records(t) {
			msg := r["msg"].(string)
			if strings.Contains(msg, "circuit breaker") {
				require.Equal(t, "WARN", r["level"])
				msgs = append(msgs, msg)
			}
		}
		return msgs
	}
	stPoll(t, 10*time.Second, time.Millisecond, "breaker close logged", func() bool { return len(breakerLines()) >= 2 })
	transitions := breakerLines()
	require.Len(t, transitions, 2, b.String())
	require.Contains(t, transitions[0], "circuit breaker open")
	require.Contains(t, transitions[1], "circuit breaker closed")
	lines, failures := storeFailureLines(t, b)
	require.Equal(t, 1, lines, "one line within the interval")
	last := b.records(t)[len(b.records(t))-1]
	require.EqualValues(t, c.Stats().StoreErrors, failures+uint64(last["suppressed"].(float64)),
		"the closing line accounts for the failures not logged")
}

// No secret reaches the log: not a password from a Redis URL, not a cached value, not a key.
func TestLoggingNoSecrets(t *testing.T) {
	const password = "Pa55w0rd-never-logged"
	const value = "value-never-logged-4242"
	const key = "key-never-logged-1717"
	check := func(t *testing.T, url string) {
		b, logger := newLogBuffer()
		opt, err := redis.ParseURL(url)
		require.NoError(t, err)
		client := redis.NewClient(opt)
		t.Cleanup(func() { client.Close() })
		c := newTestCache[string](t, NewRedisStore(client), WithLogger(logger), WithCircuitBreaker(2, 5*time.Millisecond),
			WithInvalidateTimeout(time.Nanosecond)) // one attempt each: the log lines, not the retries, are under test
		for range 5 {
			v, err := c.GetOrLoad(bg(), key, constLoad(value))
			require.NoError(t, err, "fails open")
			require.Equal(t, value, v)
		}
		_ = c.Invalidate(bg(), key)
		ctx, cancel := context.WithTimeout(bg(), 100*time.Millisecond)
		defer cancel()
		_, _ = c.InvalidatePattern(ctx, key+"*")
		require.NoError(t, c.Close())
		out := b.String()
		t.Logf("log:\n%s", out)
		require.NotEmpty(t, out, "the failures are logged")
		for _, secret := range []string{password, value, key} {
			require.NotContains(t, out, secret)
		}
	}
	t.Run("refused", func(t *testing.T) {
		check(t, "redis://user:"+password+"@"+refusedAddr(t)+"/0")
	})
	t.Run("wrong password", func(t *testing.T) {
		srv := miniredis.RunT(t)
		srv.RequireAuth("the-right-one")
		check(t, "redis://:"+password+"@"+srv.Addr()+"/0") // AUTH fails
	})
}

func TestRedactError(t *testing.T) {
	for in, want := range map[string]string{
		"dial tcp 127.0.0.1:6379: connect: connection refused": "dial tcp 127.0.0.1:6379: connect: connection refused",
		"bad redis://user:secret@host:6379/0 here":             "bad redis://REDACTED@host:6379/0 here",
		"rediss://:s3cr/t#x@host:1 and redis://:two@h:2":       "rediss://REDACTED@host:1 and redis://REDACTED@h:2",
		"unix://no-credentials/path and http://plain":          "unix://no-credentials/path and http://plain",
		"redis://:p@ss@host":                                   "redis://REDACTED@host",
		strings.Repeat("x", 300):                               strings.Repeat("x", maxLoggedError) + "...",
		"invalid \xff utf8":                                    "invalid ? utf8",
	} {
		require.Equal(t, want, redactError(errors.New(in)), in)
	}
}
