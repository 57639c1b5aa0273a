package cacheasideprom

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// The Grafana dashboard in examples/ queries only metrics the collector exports, so a rename
// cannot leave a panel empty.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	newTestCache(t, newFaultyStore(t), WithPrometheus(reg, "dash")) // a store with round trips: timed
	mfs, err := reg.Gather()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	dash, err := os.ReadFile("../examples/grafana/cacheaside-dashboard.json")
	require.NoError(t, err)
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`cacheaside_[a-z0-9_]+`).FindAllString(string(dash), -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(m, suffix); ok && exported[base] {
				m = base
			}
		}
		used[m] = true
	}
	require.NotEmpty(t, used)
	for m := range used {
		require.True(t, exported[m], "the dashboard queries %s, which the collector does not export", m)
	}
	for m := range exported {
		if !used[m] {
			t.Logf("not on the dashboard: %s", m)
		}
	}
}

// Every field of a Metrics snapshot, each with its own value, shows as the series of the
// metric it feeds: the mapping pinned whole, histograms (buckets in seconds) included.
func TestCollectorMapsEveryField(t *testing.T) {
	h := func(n uint64) cacheaside.Histogram {
		return cacheaside.Histogram{Count: n + 1, Sum: time.Duration(n) * time.Millisecond, Buckets: []cacheaside.Bucket{
			{UpperBound: time.Millisecond, Count: n - 1}, {UpperBound: 2500 * time.Microsecond, Count: n},
		}}
	}
	read := func(m *cacheaside.Metrics) {
		*m = cacheaside.Metrics{
			Groups: []cacheaside.GroupMetrics{{
				Group:        "user",
				Requests:     []cacheaside.Count{{Label: "hit", N: 1}, {Label: "l1_hit", N: 2}, {Label: "miss", N: 3}, {Label: "negative_hit", N: 4}, {Label: "stale", N: 5}},
				Loads:        []cacheaside.Count{{Label: "ok", N: 6}, {Label: "not_found", N: 7}, {Label: "error", N: 8}, {Label: "panic", N: 9}},
				LoadDuration: h(10),
			}},
			StoreErrors:        []cacheaside.Count{{Label: "fill", N: 11}, {Label: "get_or_lease", N: 12}},
			StoreDurations:     []cacheaside.LabelHistogram{{Label: "fill", Histogram: h(13)}},
			LeaseWaits:         14,
			Coalesced:          []cacheaside.Count{{Label: "flight", N: 15}, {Label: "lookup", N: 16}},
			EarlyRefreshes:     17,
			StaleIfError:       18,
			Invalidations:      []cacheaside.Count{{Label: "key", N: 19}, {Label: "pattern", N: 20}, {Label: "tag", N: 21}},
			L1BroadcastDrops:   22,
			L1Flushes:          23,
			BreakerOpen:        true,
			BreakerTransitions: []cacheaside.Count{{Label: "closed", N: 24}, {Label: "open", N: 25}},
			UndecodableValues:  26,
		}
	}
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(newCollector("c", read)))
	series := func(name string, labels ...string) string {
		var b strings.Builder
		typ := "counter"
		if !strings.HasSuffix(name, "_total") {
			typ = "gauge"
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, promHelp[name], name, typ)
		for _, l := range labels {
			fmt.Fprintf(&b, "%s{cache=\"c\"%s\n", name, l)
		}
		return b.String()
	}
	want := series("cacheaside_requests_total", `,group="user",result="hit"} 1`, `,group="user",result="l1_hit"} 2`,
		`,group="user",result="miss"} 3`, `,group="user",result="negative_hit"} 4`, `,group="user",result="stale"} 5`) +
		series("cacheaside_loads_total", `,group="user",outcome="error"} 8`, `,group="user",outcome="not_found"} 7`,
			`,group="user",outcome="ok"} 6`, `,group="user",outcome="panic"} 9`) +
		`# HELP cacheaside_load_duration_seconds Duration of loader calls.
# TYPE cacheaside_load_duration_seconds histogram
cacheaside_load_duration_seconds_bucket{cache="c",group="user",le="0.001"} 9
cacheaside_load_duration_seconds_bucket{cache="c",group="user",le="0.0025"} 10
cacheaside_load_duration_seconds_bucket{cache="c",group="user",le="+Inf"} 11
cacheaside_load_duration_seconds_sum{cache="c",group="user"} 0.01
cacheaside_load_duration_seconds_count{cache="c",group="user"} 11
` + series("cacheaside_store_errors_total", `,op="fill"} 11`, `,op="get_or_lease"} 12`) +
		`# HELP cacheaside_store_duration_seconds Duration of store operations, by operation (stores with network round trips only).
# TYPE cacheaside_store_duration_seconds histogram
cacheaside_store_duration_seconds_bucket{cache="c",op="fill",le="0.001"} 12
cacheaside_store_duration_seconds_bucket{cache="c",op="fill",le="0.0025"} 13
cacheaside_store_duration_seconds_bucket{cache="c",op="fill",le="+Inf"} 14
cacheaside_store_duration_seconds_sum{cache="c",op="fill"} 0.013
cacheaside_store_duration_seconds_count{cache="c",op="fill"} 14
` + series("cacheaside_lease_waits_total", `} 14`) +
		series("cacheaside_coalesced_total", `,kind="flight"} 15`, `,kind="lookup"} 16`) +
		series("cacheaside_early_refreshes_total", `} 17`) +
		series("cacheaside_stale_if_error_total", `} 18`) +
		series("cacheaside_invalidations_total", `,kind="key"} 19`, `,kind="pattern"} 20`, `,kind="tag"} 21`) +
		series("cacheaside_l1_broadcast_drops_total", `} 22`) +
		series("cacheaside_l1_flushes_total", `} 23`) +
		series("cacheaside_breaker_open", `} 1`) +
		series("cacheaside_breaker_transitions_total", `,state="closed"} 24`, `,state="open"} 25`) +
		series("cacheaside_undecodable_values_total", `} 26`)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want)))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}
