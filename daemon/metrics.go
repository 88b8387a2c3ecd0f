package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/keyward/keyward/internal/version"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// Metrics are keywardd's Prometheus metrics. Labels are closed sets (RPC
// method, result reason, policy operation): never a key name, a context
// value, a caller-supplied string or anything secret.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	denied   *prometheus.CounterVec
	limited  *prometheus.CounterVec
	refused  *prometheus.CounterVec
	kmsKeyID prometheus.Counter
	verifies *prometheus.CounterVec
	methods  sync.Map // full RPC method name -> *methodMetrics
}

// methodMetrics are one RPC method's series that every call of it updates,
// looked up once rather than by label values on each call.
type methodMetrics struct {
	latency prometheus.Observer
	ok      prometheus.Counter
}

// NewMetrics registers keywardd's metrics; backend, when it is a
// keys.MetricsReporter, adds its own (recoveries, session pool, TPM loads).
func NewMetrics(backend any) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_requests_total", Help: "Calls answered, by RPC method and result reason (OK or an ErrorReason).",
		}, []string{"method", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyward_request_duration_seconds", Help: "Time to answer a call, by RPC method.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_denied_total", Help: "Requests the policy denied, by operation.",
		}, []string{"op"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_rate_limited_total", Help: "Calls refused by an abuse limit (per uid and unit), by limit.",
		}, []string{"limit"}),
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_refused_before_call_total",
		Help: "Calls and connections refused before a handler ran, by result: RATE_LIMITED, TOO_MANY_REQUESTS, SHUTTING_DOWN, RECEIVE_TIMEOUT, CONNECTION_LIMIT.",
	}, []string{"result"})
	m.kmsKeyID = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyward_kms_key_id_changes_total", Help: "Times the Kubernetes KMS endpoint's health probe found a new key_id (the first included).",
	})
	buildInfo := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_build_info", Help: "Always 1; the labels are keywardd's build version and the Go release it was built with.",
		ConstLabels: prometheus.Labels{"version": Version, "goversion": version.Go()},
	}, func() float64 { return 1 })
	m.verifies = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_verify_failures_total",
		Help: "Signatures (verify) and MACs (verify-mac) checked that did not verify, by operation: many failed verify-mac calls are someone guessing a credential.",
	}, []string{"op"})
	for _, op := range []policy.Operation{policy.OpVerify, policy.OpVerifyMAC} {
		m.verifies.WithLabelValues(string(op))
	}
	reg.MustRegister(m.requests, m.latency, m.denied, m.limited, m.refused, m.kmsKeyID, buildInfo, m.verifies,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if r, ok := backend.(keys.MetricsReporter); ok {
		reg.MustRegister(newReporterCollector(r))
	}
	return m
}

// Registry lets other parts (the audit log) register their metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) refusedAtOpen(result string) {
	if m != nil {
		m.refused.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) deny(op policy.Operation) {
	if m != nil {
		m.denied.WithLabelValues(string(op)).Inc()
	}
}

func (m *Metrics) verifyFailed(op policy.Operation) {
	if m != nil {
		m.verifies.WithLabelValues(string(op)).Inc()
	}
}

func (m *Metrics) rateLimited(kind abuseKind) {
	if m != nil {
		m.limited.WithLabelValues(map[abuseKind]string{abuseDenied: "denied", abuseBadMAC: "verify_mac"}[kind]).Inc()
	}
}

// forMethod returns the series of an RPC method (a registered one: unary
// interceptors see no other, so the set stays closed).
func (m *Metrics) forMethod(fullMethod string) *methodMetrics {
	if mm, ok := m.methods.Load(fullMethod); ok {
		return mm.(*methodMetrics)
	}
	method := metricName(fullMethod)
	mm, _ := m.methods.LoadOrStore(fullMethod, &methodMetrics{
		latency: m.latency.WithLabelValues(method),
		ok:      m.requests.WithLabelValues(method, "OK"),
	})
	return mm.(*methodMetrics)
}

// interceptor counts every call by method and result and times it.
func (m *Metrics) interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		mm := m.forMethod(info.FullMethod)
		mm.latency.Observe(time.Since(start).Seconds())
		if err == nil {
			mm.ok.Inc()
		} else {
			m.requests.WithLabelValues(metricName(info.FullMethod), resultOf(err)).Inc()
		}
		return resp, err
	}
}

// resultOf is "OK" or the ErrorReason name a status carries.
func resultOf(err error) string {
	if err == nil {
		return "OK"
	}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(interface{ GetReason() string }); ok {
			return info.GetReason()
		}
	}
	return st.Code().String()
}

// reporterCollector turns a backend's own metrics (keys.Metric, plain
// values) into Prometheus series. The set of names, help and labels is
// read once, at registration: a reporter keeps it fixed.
type reporterCollector struct {
	r     keys.MetricsReporter
	descs map[string]*prometheus.Desc
	order []*prometheus.Desc
}

func newReporterCollector(r keys.MetricsReporter) reporterCollector {
	c := reporterCollector{r: r, descs: map[string]*prometheus.Desc{}}
	for _, mt := range r.Metrics() {
		if _, ok := c.descs[mt.Name]; ok {
			continue
		}
		var labels []string
		if mt.Label != "" {
			labels = []string{mt.Label}
		}
		d := prometheus.NewDesc(mt.Name, mt.Help, labels, nil)
		c.descs[mt.Name] = d
		c.order = append(c.order, d)
	}
	return c
}

func (c reporterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.order {
		ch <- d
	}
}

func (c reporterCollector) Collect(ch chan<- prometheus.Metric) {
	for _, mt := range c.r.Metrics() {
		d, ok := c.descs[mt.Name]
		if !ok {
			continue // not described at registration: a reporter's set is fixed
		}
		kind := prometheus.CounterValue
		if mt.Kind == keys.Gauge {
			kind = prometheus.GaugeValue
		}
		var lv []string
		if mt.Label != "" {
			lv = []string{mt.LabelValue}
		}
		m, err := prometheus.NewConstMetric(d, kind, mt.Value, lv...)
		if err != nil {
			continue // a label that does not match its description
		}
		ch <- m
	}
}

// maxMetricsConns bounds the metrics listener's open connections (a
// scraper needs one or two); more wait in the kernel's backlog.
const maxMetricsConns = 8

// serveMetrics serves /metrics on a Unix socket (mode 0660, bound like the
// API socket: a safe directory, never through a symlink) or a loopback TCP
// address until ctx ends. Empty both: no listener.
func serveMetrics(ctx context.Context, m *Metrics, sockPath, addr string, log *slog.Logger) (func(), error) {
	var l net.Listener
	var err error
	switch {
	case sockPath != "":
		l, err = socket.Listen(socket.Config{Path: sockPath, Mode: 0o660})
	case addr != "":
		l, err = net.Listen("tcp", addr)
	default:
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	l = socket.LimitListener(l, maxMetricsConns)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	log.Info("metrics", "listen", l.Addr().String())
	return func() { srv.Close() }, nil
}

func (m *Metrics) kmsKeyIDChanged() {
	if m != nil {
		m.kmsKeyID.Inc()
	}
}
