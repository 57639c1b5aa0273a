package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/examples/userservice"
)

// TestDemo runs a short demo on the embedded defaults and checks the invariants its report
// shows: the stampede costs one loader call with the cache (and one per reader without),
// no read is stale, most reads are hits, and the chart is written.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo for a few seconds")
	}
	o := defaultOptions()
	o.duration = 2 * time.Second
	o.users = 1_000
	o.rate = 400
	o.workers = 16
	o.stampedeReaders = 50
	o.stampedeRounds = 2
	o.chart = filepath.Join(t.TempDir(), "load.svg")
	// The embedded defaults, whatever the environment says.
	o.databaseURL, o.redisURL = "", ""
	// A generous store timeout: on two busy cores the embedded miniredis can take longer than
	// its default to answer, and a timed-out lookup rightly fails open to the loader, which
	// would add loader calls to a stampede for a reason the stampede count does not measure.
	o.storeTimeout = 10 * time.Second

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.print(&out)
	t.Log(out.String())

	a, b := r.without, r.with
	for _, p := range []*phaseResult{a, b} {
		if p.Errors > 0 {
			t.Errorf("%s: %d failed requests, first: %s", p.name(), p.Errors, p.FirstError)
		}
		if p.StaleReads != 0 {
			t.Errorf("%s: %d stale reads: %v", p.name(), p.StaleReads, p.StaleExamples)
		}
		if len(p.Stampedes) != o.stampedeRounds {
			t.Errorf("%s: %d stampedes ran, want %d", p.name(), len(p.Stampedes), o.stampedeRounds)
		}
		// No throughput floor: under -race the embedded SQLite runs some 50 times slower.
		if p.Requests == 0 || p.ReadsChecked == 0 || len(p.Series) == 0 {
			t.Errorf("%s: only %d requests, %d reads checked, %d samples", p.name(), p.Requests, p.ReadsChecked, len(p.Series))
		}
	}
	for i, calls := range b.Stampedes {
		if calls != 1 {
			t.Errorf("with cache, stampede %d: %d loader calls for %d readers, want 1", i, calls, o.stampedeReaders)
		}
	}
	for i, calls := range a.Stampedes {
		if calls != int64(o.stampedeReaders) {
			t.Errorf("without cache, stampede %d: %d database reads for %d readers, want one each", i, calls, o.stampedeReaders)
		}
	}
	if a.HitRatio != 0 {
		t.Errorf("without cache: hit ratio %v, want 0", a.HitRatio)
	}
	if b.HitRatio < 0.5 {
		t.Errorf("with cache: hit ratio %.2f, want at least 0.5", b.HitRatio)
	}
	if b.DBQPS >= a.DBQPS/2 {
		t.Errorf("database load: %.0f q/s with the cache against %.0f without, want less than half", b.DBQPS, a.DBQPS)
	}
	if r.chartErr != nil {
		t.Fatal(r.chartErr)
	}
	if st, err := os.Stat(r.chart); err != nil || st.Size() == 0 {
		t.Fatalf("chart %s: %v", r.chart, err)
	}
	for _, want := range []string{"database queries/s", "hit ratio", "stampede loader calls", "stale reads", r.chart} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestOptions(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	o, err := parseOptions([]string{"-quick", "-rate", "123"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	q := defaultOptions()
	q.quick()
	if o.rate != 123 || o.duration != q.duration || o.users != q.users {
		t.Fatalf("-quick -rate 123: %+v", o)
	}
	t.Setenv("DATABASE_URL", "postgres://example/db")
	if o, _ := parseOptions(nil, &bytes.Buffer{}); o.dbLatency != 0 {
		t.Fatalf("with DATABASE_URL: db latency %v, want 0 unless asked", o.dbLatency)
	}
	for _, bad := range [][]string{{"-zipf", "1"}, {"-writes", "0.9", "-batch", "0.2"}, {"-users", "1"}, {"extra"}} {
		if _, err := parseOptions(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// The stale-read check the demo's "0" rests on does catch a read older than a returned write.
func TestCheckCatchesStaleReads(t *testing.T) {
	d := &driver{}
	ws := &workerStats{}
	d.check(userservice.User{ID: 5, Version: 3}, 3, ws)
	d.check(userservice.User{ID: 5, Version: 4}, 3, ws)
	d.check(userservice.User{ID: 5, Version: 2}, 3, ws)
	if ws.checked != 3 || ws.stale != 1 || len(ws.staleExamples) != 1 {
		t.Fatalf("checked %d, stale %d (%v), want 3 and 1", ws.checked, ws.stale, ws.staleExamples)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i))
	}
	if p50, p99 := percentile(d, 50), percentile(d, 99); p50 != 100 || p99 != 198 {
		t.Fatalf("p50 %v p99 %v, want 100 and 198", p50, p99)
	}
	if percentile(nil, 99) != 0 || percentile(d[:1], 99) != 1 {
		t.Fatal("edge cases")
	}
}
