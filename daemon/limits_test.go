package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
)

// held keeps the child's raw connections open until it exits.
var held []net.Conn

// holdConns opens n raw connections to sock, each sending the HTTP/2
// preface and an empty SETTINGS frame. A connection the daemon admits
// answers with its own SETTINGS; one it refuses is closed before any byte.
func holdConns(sock, n string) (admitted, refused int) {
	count, _ := strconv.Atoi(n)
	for range count {
		c, err := net.Dial("unix", sock)
		if err != nil {
			refused++
			continue
		}
		c.Write(append([]byte(h2Preface), h2Settings()...))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		b := make([]byte, 9)
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			refused++
			continue
		}
		c.SetReadDeadline(time.Time{})
		held = append(held, c)
		admitted++
	}
	return admitted, refused
}

// TestConnectionsPerUID: one uid cannot hold more than
// max_connections_per_uid connections (the rest are closed before a byte
// is read), and the last connections are kept for uid 0: with other uids
// holding everything else, root is still served.
func TestConnectionsPerUID(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.MaxConnections, c.Limits.MaxConnectionsPerUID = 40, 12
	})
	app := as(t, r.sock, appUID)
	if got := app.do("conns 20"); got != "OK admitted=12 refused=8" {
		t.Fatalf("20 connections from one uid with 12 per uid: %s", got)
	}
	ops := as(t, r.sock, opsUID)
	group := as(t, r.sock, groupUID)
	// 40 - 2 kept for root = 38 for other uids: 12 + 12 + 12 + 2.
	if got := ops.do("conns 12"); got != "OK admitted=12 refused=0" {
		t.Fatalf("a second uid: %s", got)
	}
	if got := group.do("conns 12"); got != "OK admitted=12 refused=0" {
		t.Fatalf("a third uid: %s", got)
	}
	// The children's gRPC clients hold no connection until they call.
	outsider := as(t, r.sock, outsideUID)
	if got := outsider.do("conns 4"); got != "OK admitted=2 refused=2" {
		t.Fatalf("a fourth uid, with 2 of the 38 left: %s", got)
	}
	c := dial(t, r.sock)
	if _, err := c.Status(ctxTimeout(t, 30*time.Second), &pb.StatusRequest{}); err != nil {
		t.Fatalf("root with other uids holding every connection but root's: %v", err)
	}
}

// TestEmptyRequestCut: a connection holding one opened request that never
// sends its message is cut at limits.receive_timeout, and the connection,
// then idle, is closed at limits.idle_timeout.
func TestEmptyRequestCut(t *testing.T) {
	t.Parallel()
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.ReceiveTimeout = config.Duration{Duration: 300 * time.Millisecond}
		c.Limits.IdleTimeout = config.Duration{Duration: 500 * time.Millisecond}
	})
	c, err := net.Dial("unix", r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// HEADERS for Wrap, END_HEADERS, no END_STREAM, then nothing. The header
	// block is HPACK with literal fields, no indexing.
	var hb []byte
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/keyward.v1.Keyward/Wrap"},
		{":authority", "keyward"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		hb = append(hb, 0x00, byte(len(kv[0])))
		hb = append(hb, kv[0]...)
		hb = append(hb, byte(len(kv[1])))
		hb = append(hb, kv[1]...)
	}
	c.Write(cat([]byte(h2Preface), h2Settings(), h2Frame(h2Headers, 0x4, 1, hb)))
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var ended, goaway bool
	for {
		h := make([]byte, 9)
		if _, err := io.ReadFull(c, h); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open after 60 s (stream ended: %v, GOAWAY: %v)", ended, goaway)
			}
			break // closed by the daemon
		}
		n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		payload := make([]byte, n)
		io.ReadFull(c, payload)
		switch typ, flags := h[3], h[4]; {
		case typ == h2Headers && flags&0x1 != 0, typ == 0x3: // trailers, or RST_STREAM
			ended = true
		case typ == 0x7:
			goaway = true
		case typ == 0x6 && flags&0x1 == 0: // PING: answered, as any client does
			c.Write(h2Frame(0x6, 0x1, 0, payload))
		}
	}
	if !ended || !goaway {
		t.Fatalf("connection closed; stream ended: %v, GOAWAY first: %v", ended, goaway)
	}
}

// TestHalfHeaderBlockHoldsNoCall: connections whose request header block
// never ends (HEADERS without END_HEADERS, then nothing) hold none of the
// uid's max_concurrent_per_uid call slots: gRPC never sees such a call,
// so receive_timeout could not cut it, and it must not block the uid's
// real calls until the connection's idle_timeout.
func TestHalfHeaderBlockHoldsNoCall(t *testing.T) {
	t.Parallel()
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.MaxConcurrentPerUID = 2
	})
	var hb []byte
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/keyward.v1.Keyward/Status"}} {
		hb = append(hb, 0x00, byte(len(kv[0])))
		hb = append(hb, kv[0]...)
		hb = append(hb, byte(len(kv[1])))
		hb = append(hb, kv[1]...)
	}
	for range 2 {
		c, err := net.Dial("unix", r.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(cat([]byte(h2Preface), h2Settings(), h2Frame(h2Headers, 0, 1, hb))); err != nil {
			t.Fatal(err)
		}
		// Its SETTINGS acknowledged: the daemon has handled the frame
		// before the HEADERS, and reads that at once.
		for acked := false; !acked; {
			h := make([]byte, 9)
			c.SetReadDeadline(time.Now().Add(30 * time.Second)) // ends a hang only
			if _, err := io.ReadFull(c, h); err != nil {
				t.Fatal(err)
			}
			io.ReadFull(c, make([]byte, int(h[0])<<16|int(h[1])<<8|int(h[2])))
			acked = h[3] == 0x4 && h[4]&0x1 != 0
		}
	}
	c := dial(t, r.sock)
	for i := range 3 {
		if _, err := c.Status(t.Context(), &pb.StatusRequest{}); err != nil {
			t.Fatalf("Status %d with two half header blocks open: %v", i, err)
		}
	}
}

// TestRefusalSummaryBudget: a uid that no rule names sends 1000-item
// BatchWraps, on a key it may not use or with an invalid 4000-byte key
// name: past its denied-request limit every item, then every call, is
// refused or summarised. The audit log grows by a few records and one
// summary per interval, not by a record per item.
func TestRefusalSummaryBudget(t *testing.T) {
	t.Parallel()
	const calls = 300
	for _, c := range []struct{ name, key string }{
		{"denied", "app/flood"},
		{"invalid key name", strings.Repeat("x", 4000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := start(t, testRules(), func(c *config.Config) { c.AuditRefusalInterval = config.Duration{Duration: time.Second} })
			logPath := filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")
			before := recordBytes(t, logPath)
			outsider := as(t, r.sock, outsideUID)
			got := outsider.do(fmt.Sprintf("batchflood %d %s", calls, c.key))
			if !strings.Contains(got, "RATE_LIMITED") {
				t.Fatalf("flood results: %s", got)
			}
			single, summary, counted := waitSummaries(t, logPath, calls-1)
			grew := recordBytes(t, logPath) - before
			t.Logf("%d calls of 1000 items: %d single records, %d summaries counting %d refusals; the log grew %d bytes", calls, single, summary, counted, grew)
			// max_denied_per_minute (60) refusals, each with its record, per window.
			if limit := 2 * (config.Defaults().Limits.MaxDeniedPerMinute + 1); single > limit {
				t.Errorf("%d single records of the refused caller, want at most %d", single, limit)
			}
			if grew > 5<<20 {
				t.Errorf("the audit log grew %d bytes, want at most 5 MiB", grew)
			}
		})
	}
}

// waitSummaries waits until the outsider's summary records count at least
// want refusals, and returns its single records, summaries and that count.
func waitSummaries(t *testing.T, logPath string, want uint64) (single, summary int, counted uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		single, summary, counted = 0, 0, 0
		for _, a := range readAudit(t, logPath) {
			if a.Peer.UID != outsideUID {
				continue
			}
			if a.Op != daemon.OpRefused {
				single++
				if len(a.Key) > 131 {
					t.Fatalf("a record with a %d-byte key", len(a.Key))
				}
				continue
			}
			summary++
			f := strings.Fields(a.Reason)
			n, _ := strconv.ParseUint(strings.TrimPrefix(f[0], "count="), 10, 64)
			counted += n
		}
		if counted >= want {
			return single, summary, counted
		}
		if time.Now().After(deadline) {
			t.Fatalf("summaries count %d refusals of at least %d", counted, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recordBytes is the size of the records of the audit file at path (not
// the free space that ends it while keywardd runs).
func recordBytes(t *testing.T, path string) int64 {
	t.Helper()
	lines, err := audit.FileLines(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range lines {
		n += int64(len(l)) + 1
	}
	return n
}

// TestMetricsConnectionCap: the metrics listener keeps a few connections;
// while they are held a scrape waits, and it is served once one of them
// is closed, never beside them.
func TestMetricsConnectionCap(t *testing.T) {
	t.Parallel()
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	start(t, testRules(), func(c *config.Config) { c.MetricsSocket = metricsSock })
	var conns []net.Conn
	for range 8 {
		c, err := net.Dial("unix", metricsSock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	hc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", metricsSock)
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	freed := false
	served := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://keyward/metrics", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			mu.Lock()
			if !freed {
				err = errors.New("a scrape was served beside 8 held connections")
			}
			mu.Unlock()
		}
		served <- err
	}()
	// Free a slot once the scrape has had the time to be served wrongly
	// (a slow machine only makes the check weaker, never fail).
	select {
	case err := <-served:
		t.Fatal(err)
	case <-time.After(300 * time.Millisecond):
	}
	mu.Lock()
	freed = true
	mu.Unlock()
	conns[0].Close()
	if err := <-served; err != nil {
		t.Fatalf("scrape after a slot was freed: %v", err)
	}
}
