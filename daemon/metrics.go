package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/keyward/keyward/hsm"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
	"github.com/keyward/keyward/tpm"
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
	methods  sync.Map // full RPC method name -> *methodMetrics
}

// methodMetrics are one RPC method's series that every call of it updates,
// looked up once rather than by label values on each call.
type methodMetrics struct {
	latency prometheus.Observer
	ok      prometheus.Counter
}

// NewMetrics registers keywardd's metrics; backend, when it reports Stats,
// adds recoveries and session-pool gauges.
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
			Name: "keyward_rate_limited_total", Help: "Calls refused by a per-uid abuse limit, by limit.",
		}, []string{"limit"}),
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_refused_before_call_total",
		Help: "Calls and connections refused before a handler ran, by result: RATE_LIMITED, TOO_MANY_REQUESTS, SHUTTING_DOWN, RECEIVE_TIMEOUT, CONNECTION_LIMIT.",
	}, []string{"result"})
	reg.MustRegister(m.requests, m.latency, m.denied, m.limited, m.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	switch st := backend.(type) {
	case interface{ Stats() hsm.Stats }:
		reg.MustRegister(backendCollector{st.Stats})
	case interface{ Stats() tpm.Stats }:
		reg.MustRegister(tpmCollector{st.Stats})
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
	method := path.Base(fullMethod)
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
			m.requests.WithLabelValues(path.Base(info.FullMethod), resultOf(err)).Inc()
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

type backendCollector struct{ stats func() hsm.Stats }

var (
	descRecoveries = prometheus.NewDesc("keyward_backend_recoveries_total", "Times the device was usable again after a re-initialisation.", nil, nil)
	descRecFail    = prometheus.NewDesc("keyward_backend_recovery_failures_total", "Re-initialisation attempts that found the device unusable.", nil, nil)
	descSessions   = prometheus.NewDesc("keyward_backend_sessions", "PKCS#11 sessions in the pool, by state.", []string{"state"}, nil)
	descSessMax    = prometheus.NewDesc("keyward_backend_sessions_max", "Bound of the PKCS#11 session pool.", nil, nil)
)

func (c backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRecoveries
	ch <- descRecFail
	ch <- descSessions
	ch <- descSessMax
}

func (c backendCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descRecoveries, prometheus.CounterValue, float64(s.Recoveries))
	ch <- prometheus.MustNewConstMetric(descRecFail, prometheus.CounterValue, float64(s.RecoveryFailures))
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(s.SessionsOpen-s.SessionsIdle), "in_use")
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(s.SessionsIdle), "idle")
	ch <- prometheus.MustNewConstMetric(descSessMax, prometheus.GaugeValue, float64(s.SessionsMax))
}

type tpmCollector struct{ stats func() tpm.Stats }

var (
	descTPMLoads  = prometheus.NewDesc("keyward_tpm_object_loads_total", "TPM2_Load calls: key objects loaded because they were not in the TPM's few slots.", nil, nil)
	descTPMLoaded = prometheus.NewDesc("keyward_tpm_objects_loaded", "Key objects loaded in the TPM now.", nil, nil)
	descTPMBehind = prometheus.NewDesc("keyward_tpm_rollback_counter_behind", "1 while the last key change's rollback counter step has failed and is not yet finished.", nil, nil)
)

func (c tpmCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRecoveries
	ch <- descRecFail
	ch <- descTPMLoads
	ch <- descTPMLoaded
	ch <- descTPMBehind
}

func (c tpmCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descRecoveries, prometheus.CounterValue, float64(s.Recoveries))
	ch <- prometheus.MustNewConstMetric(descRecFail, prometheus.CounterValue, float64(s.RecoveryFailures))
	ch <- prometheus.MustNewConstMetric(descTPMLoads, prometheus.CounterValue, float64(s.ObjectLoads))
	ch <- prometheus.MustNewConstMetric(descTPMLoaded, prometheus.GaugeValue, float64(s.ObjectsLoaded))
	behind := 0.0
	if s.CounterBehind {
		behind = 1
	}
	ch <- prometheus.MustNewConstMetric(descTPMBehind, prometheus.GaugeValue, behind)
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
