package cacheasideprom

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// promHelp is the help text of every metric, as the collector describes it.
var promHelp = map[string]string{
	"cacheaside_requests_total":            "Cache requests by how they were answered: hit, l1_hit, negative_hit and stale from the cache, miss by a load.",
	"cacheaside_loads_total":               "Loader calls by outcome: ok, not_found, error, panic.",
	"cacheaside_store_errors_total":        "Store operations that failed or timed out, by operation.",
	"cacheaside_lease_waits_total":         "Waits for a lease held by another process.",
	"cacheaside_coalesced_total":           "Calls that shared work in this process: joined a load or lease wait in flight (flight), or shared a store lookup (lookup).",
	"cacheaside_early_refreshes_total":     "Refreshes started before expiry (early refresh).",
	"cacheaside_stale_if_error_total":      "Requests answered with an expired value because its load failed (stale-if-error); also counted as result stale in cacheaside_requests_total.",
	"cacheaside_invalidations_total":       "Invalidations: keys passed to Invalidate (key), InvalidatePattern calls (pattern), tags passed to InvalidateTags (tag).",
	"cacheaside_l1_broadcast_drops_total":  "Local cache entries dropped on another instance's invalidation broadcast (entries this instance held, not keys named).",
	"cacheaside_l1_flushes_total":          "Times the whole local cache was dropped because an invalidation may have been missed.",
	"cacheaside_breaker_open":              "Whether the circuit breaker skips the store: 1 open, 0 closed.",
	"cacheaside_breaker_transitions_total": "Circuit breaker transitions, by the state entered.",
	"cacheaside_undecodable_values_total":  "Stored entries that did not decode, treated as misses and replaced.",
}

// Label sets after cache, in the order the registry sorts the series.
var (
	noLabels      = []string{""}
	resultLabels  = []string{`group="",result="hit"`, `group="",result="l1_hit"`, `group="",result="miss"`, `group="",result="negative_hit"`, `group="",result="stale"`}
	outcomeLabels = []string{`group="",outcome="error"`, `group="",outcome="not_found"`, `group="",outcome="ok"`, `group="",outcome="panic"`}
	opLabels      = []string{`op="add_tags"`, `op="delete"`, `op="delete_pattern"`, `op="fill"`, `op="fill_many"`, `op="get_or_lease"`, `op="get_or_lease_many"`, `op="lease"`, `op="ping"`, `op="publish"`, `op="release"`, `op="remove_tags"`, `op="tagged_keys"`}
)

// expo is the exposition of metric name of cache "users", for testutil: its HELP and TYPE
// lines, then a series for each label set in labels (after cache) with the value of the same
// index.
func expo(name string, labels []string, values ...int) string {
	typ := "counter"
	if !strings.HasSuffix(name, "_total") {
		typ = "gauge"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, promHelp[name], name, typ)
	for i, l := range labels {
		if l != "" {
			l = "," + l
		}
		fmt.Fprintf(&b, "%s{cache=\"users\"%s} %d\n", name, l, values[i])
	}
	return b.String()
}

// promCounters is the exposition of every counter and gauge of cache "users" (key groups
// off), with the values given in order: requests hit, l1_hit, miss, negative_hit, stale;
// loads error, not_found, ok, panic; store errors delete, delete_pattern, fill, fill_many,
// get_or_lease, get_or_lease_many, lease, ping, release (add_tags, publish, remove_tags,
// tagged_keys: 0); lease waits; coalesced flight, lookup; early refreshes; stale-if-error;
// invalidations key, pattern (tag: 0); l1 drops; l1
// flushes; breaker open; transitions closed, open; undecodable.
func promCounters(v ...int) string {
	take := func(n int) []int {
		out := append([]int(nil), v[:n]...)
		v = v[n:]
		return out
	}
	return expo("cacheaside_requests_total", resultLabels, take(5)...) +
		expo("cacheaside_loads_total", outcomeLabels, take(4)...) +
		expo("cacheaside_store_errors_total", opLabels, slices.Concat([]int{0}, take(8), []int{0}, take(1), []int{0, 0})...) +
		expo("cacheaside_lease_waits_total", noLabels, take(1)...) +
		expo("cacheaside_coalesced_total", []string{`kind="flight"`, `kind="lookup"`}, take(2)...) +
		expo("cacheaside_early_refreshes_total", noLabels, take(1)...) +
		expo("cacheaside_stale_if_error_total", noLabels, take(1)...) +
		expo("cacheaside_invalidations_total", []string{`kind="key"`, `kind="pattern"`, `kind="tag"`}, append(take(2), 0)...) +
		expo("cacheaside_l1_broadcast_drops_total", noLabels, take(1)...) +
		expo("cacheaside_l1_flushes_total", noLabels, take(1)...) +
		expo("cacheaside_breaker_open", noLabels, take(1)...) +
		expo("cacheaside_breaker_transitions_total", []string{`state="closed"`, `state="open"`}, take(2)...) +
		expo("cacheaside_undecodable_values_total", noLabels, take(1)...)
}

var counterNames = []string{
	"cacheaside_requests_total", "cacheaside_loads_total", "cacheaside_store_errors_total",
	"cacheaside_lease_waits_total", "cacheaside_coalesced_total", "cacheaside_early_refreshes_total", "cacheaside_stale_if_error_total",
	"cacheaside_invalidations_total", "cacheaside_l1_broadcast_drops_total", "cacheaside_l1_flushes_total",
	"cacheaside_breaker_open", "cacheaside_breaker_transitions_total", "cacheaside_undecodable_values_total",
}

// gathered returns the metric family name gathered from g, or nil.
func gathered(t *testing.T, g prometheus.Gatherer, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// histogramCounts returns the sample count of every series of the histogram name, by the
// value of label.
func histogramCounts(t *testing.T, g prometheus.Gatherer, name, label string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	mf := gathered(t, g, name)
	if mf == nil {
		return out
	}
	require.Equal(t, dto.MetricType_HISTOGRAM, mf.GetType())
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	return out
}

// promSeries returns the value of every series of the counter or gauge name gathered from g,
// keyed by its labels other than cache ("kind=flight"; "" for none).
func promSeries(t *testing.T, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	mf := gathered(t, g, name)
	for _, m := range mf.GetMetric() {
		var labels []string
		for _, lp := range m.GetLabel() {
			if lp.GetName() != "cache" {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
		}
		v := m.GetCounter().GetValue()
		if mf.GetType() == dto.MetricType_GAUGE {
			v = m.GetGauge().GetValue()
		}
		out[strings.Join(labels, ",")] = v
	}
	return out
}
