package outbox

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Stats and Prometheus: pending rows, lag and its warning, deliveries, retries; Close
// unregisters the metrics.
func TestStatsPrometheusAndLagWarning(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	reg := prometheus.NewPedanticRegistry()
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	inv := Func(func(context.Context, ...string) error { return nil })
	box := newBox(t, db, WithTable(table), WithCache("c", inv), noRelay())
	box.Close()
	// A foreign cache's row, an hour old: pending, lagging, never delivered here.
	if _, err := db.Exec(`INSERT INTO ` + table + ` (cache, keys, created_at) VALUES ('other', '["x"]', now() - interval '1 hour')`); err != nil {
		t.Fatal(err)
	}
	box = newBox(t, db, WithTable(table), WithCache("c", inv), WithPrometheus(reg), WithLagWarning(time.Minute),
		WithLogger(logger), WithPollInterval(10*time.Millisecond))
	if err := box.Do(context.Background(), nil, func(tx *sql.Tx) error { return box.Invalidate(context.Background(), tx, "c", "k") }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the relay's look at the table", func() bool { return box.Stats().Pending == 1 })
	s := box.Stats()
	if s.Lag < 59*time.Minute || s.Deliveries != 1 {
		t.Fatalf("Stats = %+v, want 1 pending, lag about an hour, 1 delivery", s)
	}
	waitFor(t, 30*time.Second, "the lag warning", func() bool {
		logMu.Lock()
		defer logMu.Unlock()
		return strings.Contains(logs.String(), "invalidations are lagging")
	})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP cacheaside_outbox_deliveries_total Rows this process delivered and deleted.
# TYPE cacheaside_outbox_deliveries_total counter
cacheaside_outbox_deliveries_total{table=%[1]q} 1
# HELP cacheaside_outbox_pending_rows Rows not yet delivered, every cache's, as of the relay's last look (parked rows excluded).
# TYPE cacheaside_outbox_pending_rows gauge
cacheaside_outbox_pending_rows{table=%[1]q} 1
# HELP cacheaside_outbox_retries_total Row deliveries of this process that failed and were rescheduled.
# TYPE cacheaside_outbox_retries_total counter
cacheaside_outbox_retries_total{table=%[1]q} 0
`, table)), "cacheaside_outbox_deliveries_total", "cacheaside_outbox_pending_rows", "cacheaside_outbox_retries_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "cacheaside_outbox_lag_seconds", "cacheaside_outbox_parked_rows"); err != nil || n != 2 {
		t.Fatalf("lag and parked series: %d, %v", n, err)
	}
	box.Close()
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Fatalf("%d series left after Close", n)
	}
}
