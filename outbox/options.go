package outbox

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the options. Each option's doc repeats its default.
const (
	DefaultTable           = "cacheaside_outbox"
	DefaultPollInterval    = 500 * time.Millisecond
	DefaultLease           = 5 * time.Second
	DefaultRetryMin        = 100 * time.Millisecond
	DefaultRetryMax        = 5 * time.Second
	DefaultBatchSize       = 100
	DefaultLagWarning      = 30 * time.Second
	DefaultLagWarningEvery = time.Minute
)

// Option configures an Outbox.
type Option func(*config)

type config struct {
	table              string
	caches             map[string]Invalidator
	poll               time.Duration
	lease              time.Duration
	retryMin, retryMax time.Duration
	batch              int
	lagWarn            time.Duration
	logger             *slog.Logger
	reg                prometheus.Registerer
	notify             bool
	errs               []string

	// Test knobs: no relay goroutine; Do does not deliver after its commit (a crash).
	noRelay, noDeliver bool
}

func defaultConfig() config {
	return config{
		table:    DefaultTable,
		caches:   make(map[string]Invalidator),
		poll:     DefaultPollInterval,
		lease:    DefaultLease,
		retryMin: DefaultRetryMin,
		retryMax: DefaultRetryMax,
		batch:    DefaultBatchSize,
		lagWarn:  DefaultLagWarning,
		logger:   slog.Default(),
	}
}

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,50}$`)

// WithCache registers c under name: Invalidate accepts name, and this process's relay
// delivers the rows of name to c. InvalidateTags accepts name only if c is also a
// TagInvalidator. A *cacheaside.Cache[T] is both. The name is what
// the table stores, so it must stay the same across processes and releases (the cache's
// prefix is a natural choice). Rows of a cache this process has not registered are left to a
// process that has. At least one cache is required; a name may be registered once.
func WithCache(name string, c Invalidator) Option {
	return func(cfg *config) {
		switch {
		case name == "":
			cfg.invalid("empty cache name")
		case c == nil:
			cfg.invalid("nil Invalidator for cache %q", name)
		case cfg.caches[name] != nil:
			cfg.invalid("cache %q registered twice", name)
		default:
			cfg.caches[name] = c
		}
	}
}

// WithTable sets the outbox table's name: lower-case letters, digits and _, starting with a
// letter or _, at most 50 characters (its index's name adds to it). Default: DefaultTable,
// "cacheaside_outbox".
func WithTable(name string) Option {
	return func(c *config) {
		if !identifier.MatchString(name) {
			c.invalid("table name %q: want lower-case letters, digits and _, at most 50", name)
			return
		}
		c.table = name
	}
}

// WithPollInterval sets how often the relay looks for due rows when nothing woke it (Wake):
// the delivery delay of a row written outside Do, or retried after a failure. Default:
// DefaultPollInterval, 500ms.
func WithPollInterval(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.invalid("poll interval must be positive, got %v", d)
			return
		}
		c.poll = d
	}
}

// WithLease sets how long a row claimed for delivery (by a relay, or by Do for its own rows)
// is left to its claimer before another process may take it: the delay before a row whose
// writer or relay died is delivered by another. A delivery attempt is bounded by half of it,
// so that no row is delivered by two relays at once. Default: DefaultLease, 5s.
func WithLease(d time.Duration) Option {
	return func(c *config) {
		if d < 10*time.Millisecond {
			c.invalid("lease must be at least 10ms, got %v", d)
			return
		}
		c.lease = d
	}
}

// WithRetryBackoff sets the delay before a failed delivery is tried again: min after the first
// failure, doubling with each further one up to max, with up to 25% jitter off. Default:
// DefaultRetryMin and DefaultRetryMax, 100ms to 5s.
func WithRetryBackoff(min, max time.Duration) Option {
	return func(c *config) {
		if min <= 0 || max < min {
			c.invalid("retry backoff: want 0 < min <= max, got %v and %v", min, max)
			return
		}
		c.retryMin, c.retryMax = min, max
	}
}

// WithBatchSize sets how many rows the relay claims at a time. Default: DefaultBatchSize, 100.
func WithBatchSize(n int) Option {
	return func(c *config) {
		if n <= 0 {
			c.invalid("batch size must be positive, got %d", n)
			return
		}
		c.batch = n
	}
}

// WithLagWarning sets the age of the oldest pending row (of any cache) beyond which the relay
// logs a warning, at most once per DefaultLagWarningEvery (1 minute) while it lasts. 0 turns
// the warning off. Default: DefaultLagWarning, 30s.
func WithLagWarning(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.invalid("lag warning must not be negative, got %v", d)
			return
		}
		c.lagWarn = d
	}
}

// WithLogger sets where the outbox logs, at Warn and Error: rows parked because they cannot be
// decoded, the lag warning, and relay failures (rate-limited); never a key. nil turns logging
// off. Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithPrometheus exports the outbox's metrics to reg (never the global registry unless you
// pass it), each with the label table=<the table>: cacheaside_outbox_pending_rows,
// cacheaside_outbox_parked_rows, cacheaside_outbox_lag_seconds,
// cacheaside_outbox_deliveries_total and cacheaside_outbox_retries_total (see Stats). New
// registers them and Close unregisters them. Default: no export.
func WithPrometheus(reg prometheus.Registerer) Option {
	return func(c *config) {
		if reg == nil {
			c.invalid("prometheus registerer must not be nil")
			return
		}
		c.reg = reg
	}
}

// WithNotify makes every Invalidate also send a NOTIFY on the channel named like the table
// (Table), which PostgreSQL delivers at commit: a relay listening on it (package pgxoutbox)
// then delivers the rows of a transaction of your own at once instead of at its next poll. It
// costs one more statement per Invalidate, and PostgreSQL serializes the commits of
// transactions that sent a NOTIFY. Do needs none of it. Default: off.
func WithNotify() Option {
	return func(c *config) { c.notify = true }
}
