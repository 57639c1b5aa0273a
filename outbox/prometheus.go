package outbox

import "github.com/prometheus/client_golang/prometheus"

// collector exports an Outbox's Stats at scrape time.
type collector struct {
	b                                         *Outbox
	pending, parked, lag, deliveries, retries *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

func newCollector(b *Outbox) *collector {
	labels := prometheus.Labels{"table": b.cfg.table}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("cacheaside_outbox_"+name, help, nil, labels)
	}
	return &collector{
		b:          b,
		pending:    d("pending_rows", "Rows not yet delivered, every cache's, as of the relay's last look (parked rows excluded)."),
		parked:     d("parked_rows", "Rows kept aside because they cannot be decoded."),
		lag:        d("lag_seconds", "Age of the oldest pending row, as of the relay's last look; 0 if none."),
		deliveries: d("deliveries_total", "Rows this process delivered and deleted."),
		retries:    d("retries_total", "Row deliveries of this process that failed and were rescheduled."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.parked, c.lag, c.deliveries, c.retries} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Pending))
	ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(s.Parked))
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, s.Lag.Seconds())
	ch <- prometheus.MustNewConstMetric(c.deliveries, prometheus.CounterValue, float64(s.Deliveries))
	ch <- prometheus.MustNewConstMetric(c.retries, prometheus.CounterValue, float64(s.Retries))
}
