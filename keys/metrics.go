package keys

// Metric is one value a backend reports about itself (device recoveries,
// its session pool, TPM object loads), in plain values so that a backend
// needs no metrics library: the daemon turns each into a Prometheus series.
// Names and help are fixed strings; a label value is one of a closed set,
// never a key name or anything a caller chose.
type Metric struct {
	Name, Help string
	Kind       MetricKind
	// Label and LabelValue, when Label is set, tell series of one Name
	// apart ("state" = "idle"); every series of a Name has the same Label.
	Label, LabelValue string
	Value             float64
}

// MetricKind is a counter (only ever grows) or a gauge.
type MetricKind int

const (
	Counter MetricKind = iota
	Gauge
)

// MetricsReporter is a backend that reports metrics of its own. Metrics
// returns the same names, help, kinds and labels on every call (only the
// values change), and must not wait for the device.
type MetricsReporter interface {
	Metrics() []Metric
}
