package cacheaside

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// DefaultLogInterval is the least time between two store-failure log lines of one Cache
// (WithLogger).
const DefaultLogInterval = 10 * time.Second

// WithLogger logs what an operator must know, at Warn: store failures, rate-limited to one
// line per DefaultLogInterval (10 seconds) with the number of failures not logged since the
// previous line, so an outage does not flood the log; and every circuit breaker transition
// (bounded by the breaker itself: at most two per probe interval). Nothing is logged on the
// hit path. Lines carry the cache name (WithName, else the prefix), the store
// operation and the store's error text with any URL credentials removed, cut to 256 bytes;
// never a key, a value, a password or a codec key. Default: nil, no logging.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.obs.logger = l }
}

// withLogInterval changes the rate limit of WithLogger (tests).
func withLogInterval(d time.Duration) Option {
	return func(c *config) { c.obs.logEvery = d }
}

// logSink writes an observer's log lines.
type logSink struct {
	l          *slog.Logger
	cache      string
	every      time.Duration
	next       atomic.Int64  // unix nanoseconds before which store failures are not logged
	suppressed atomic.Uint64 // store failures not logged since the last line
}

func newLogSink(l *slog.Logger, cache string, every time.Duration) *logSink {
	if every <= 0 {
		every = DefaultLogInterval
	}
	return &logSink{l: l, cache: cache, every: every}
}

// storeFailed logs a store failure, unless one was logged less than every ago; then it only
// counts it, for the next line.
func (s *logSink) storeFailed(op storeOp, err error) {
	now := time.Now().UnixNano()
	next := s.next.Load()
	if now < next || !s.next.CompareAndSwap(next, now+int64(s.every)) {
		s.suppressed.Add(1)
		return
	}
	s.l.LogAttrs(context.Background(), slog.LevelWarn, "cacheaside: store operation failed; the cache fails open to the loader",
		slog.String("cache", s.cache),
		slog.String("op", op.String()),
		slog.String("error", redactError(err)),
		slog.Uint64("suppressed", s.suppressed.Swap(0)),
	)
}

// breakerChanged logs a circuit breaker transition. Closing also reports the store failures
// not logged since the last line.
func (s *logSink) breakerChanged(open bool) {
	if open {
		s.l.LogAttrs(context.Background(), slog.LevelWarn,
			"cacheaside: circuit breaker open: skipping the store and calling loaders directly until a probe succeeds",
			slog.String("cache", s.cache))
		return
	}
	s.l.LogAttrs(context.Background(), slog.LevelWarn,
		"cacheaside: circuit breaker closed: the store answers again",
		slog.String("cache", s.cache),
		slog.Uint64("suppressed", s.suppressed.Swap(0)))
}

// maxLoggedError bounds the error text of a log line, in bytes.
const maxLoggedError = 256

// redactError is err's text fit for a log line: credentials of any URL in it (scheme://user:
// password@host) removed, cut to maxLoggedError bytes. Errors of the built-in stores carry
// addresses and Redis error replies, never a value.
func redactError(err error) string {
	s := redactURLCredentials(err.Error())
	if len(s) > maxLoggedError {
		s = strings.ToValidUTF8(s[:maxLoggedError], "") + "..."
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	return s
}

// redactURLCredentials replaces the user information of every "scheme://userinfo@host" in s.
func redactURLCredentials(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			if b.Len() == 0 {
				return s
			}
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		// Up to the next space or quote, not the next slash: a password may hold one
		// unescaped; removing too much is fine.
		end := strings.IndexAny(s, " \t\n\"'`")
		if end < 0 {
			end = len(s)
		}
		if at := strings.LastIndexByte(s[:end], '@'); at >= 0 {
			b.WriteString("REDACTED@")
			s = s[at+1:]
		}
	}
}
