package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
)

// raiseNoFile makes sure this process may hold need descriptors (the daemon
// and its clients share it), restoring the old limit when the test ends.
func raiseNoFile(t *testing.T, need uint64) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if old.Cur >= need {
		return
	}
	lim := unix.Rlimit{Cur: need, Max: max(old.Max, need)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("RLIMIT_NOFILE is %d/%d and cannot be raised to %d: %v", old.Cur, old.Max, need, err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
}

// slowClients opens n raw connections that never finish the HTTP/2
// handshake: even ones say nothing, odd ones send half the preface.
func slowClients(t *testing.T, sock string, n int) []net.Conn {
	t.Helper()
	out := make([]net.Conn, 0, n)
	for i := range n {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if i%2 == 1 {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write([]byte(h2Preface[:len(h2Preface)/2]))
		}
		out = append(out, c)
	}
	return out
}

// normalLoad runs clients goroutines, each on its own connection doing
// wrap then unwrap with a 30 s deadline per call (it ends a starvation;
// the machine's speed must not fail it), for d after its first
// success; the first call of each may wait up to first (for a slot).
// It returns the calls made, the slowest after the first, when each
// client's first call was answered, and every failure.
func normalLoad(t *testing.T, sock, key string, clients int, first, d time.Duration) (calls int, slowest time.Duration, firstServed []time.Duration, errs []error) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	began := time.Now()
	for i := range clients {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := pb.NewKeywardClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// slowest counts the calls after the first, which may wait for a slot.
			roundTrip := func(limit time.Duration, timed bool) error {
				ctx, cancel := context.WithTimeout(context.Background(), limit)
				defer cancel()
				s := time.Now()
				w, err := c.Wrap(ctx, &pb.WrapRequest{Key: key, Plaintext: []byte(fmt.Sprint("client ", i))})
				if err != nil {
					return fmt.Errorf("client %d: wrap after %v: %w", i, time.Since(s).Round(time.Millisecond), err)
				}
				took := time.Since(s)
				ctx2, cancel2 := context.WithTimeout(context.Background(), limit)
				defer cancel2()
				s = time.Now()
				u, err := c.Unwrap(ctx2, &pb.UnwrapRequest{Ciphertext: w.Ciphertext})
				if err != nil {
					return fmt.Errorf("client %d: unwrap after %v: %w", i, time.Since(s).Round(time.Millisecond), err)
				}
				if string(u.Plaintext) != fmt.Sprint("client ", i) {
					return fmt.Errorf("client %d: unwrap returned %q", i, u.Plaintext)
				}
				took = max(took, time.Since(s))
				mu.Lock()
				calls += 2
				if timed {
					slowest = max(slowest, took)
				}
				mu.Unlock()
				return nil
			}
			if err := roundTrip(first, false); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("first call: %w", err))
				mu.Unlock()
				return
			}
			mu.Lock()
			firstServed = append(firstServed, time.Since(began).Round(time.Millisecond))
			mu.Unlock()
			for end := time.Now().Add(d); time.Now().Before(end); {
				if err := roundTrip(30*time.Second, true); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return calls, slowest, firstServed, errs
}

// connsStillServe checks that a new connection gets a wrap/unwrap answered.
func connsStillServe(t *testing.T, sock, key string) {
	t.Helper()
	calls, _, _, errs := normalLoad(t, sock, key, 1, 10*time.Second, 0)
	if len(errs) > 0 || calls == 0 {
		t.Fatalf("daemon not serving a new client: %v", errs)
	}
}

// TestManyConnections: 1,000 connected clients held open and 20 clients
// stuck in the handshake do not keep 4 working clients from getting every
// answer (within a deadline that only ends a starvation).
func TestManyConnections(t *testing.T) {
	const held, slow, normal = 1000, 20, 4
	// Both ends of every connection live in this process.
	raiseNoFile(t, 2*(held+slow+normal)+512)
	r := start(t, testRules(), func(c *config.Config) { c.Limits.MaxConnections, c.Limits.MaxConnectionsPerUID = 1100, 1100 })
	ctx := context.Background()
	if _, err := dial(t, r.sock).CreateKey(ctx, &pb.CreateKeyRequest{Key: "conns/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}

	began := time.Now()
	conns := make([]*grpc.ClientConn, held)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// Connect all, each proven live by one Status call; at most 32 calls
	// at a time so the per-uid concurrency limit (64) is not what is tested.
	sem := make(chan struct{}, 32)
	errc := make(chan error, held)
	var wg sync.WaitGroup
	for i := range conns {
		c, err := grpc.NewClient("unix://"+r.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if _, err := pb.NewKeywardClient(c).Status(cx, &pb.StatusRequest{}); err != nil {
				errc <- fmt.Errorf("connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("%d connections open and answered in %v", held, time.Since(began).Round(time.Millisecond))

	slowConns := slowClients(t, r.sock, slow)
	calls, slowest, _, errs := normalLoad(t, r.sock, "conns/k", normal, 30*time.Second, 3*time.Second)
	for _, err := range errs {
		t.Error(err)
	}
	t.Logf("%d normal clients: %d calls, slowest %v, beside %d held and %d slow connections",
		normal, calls, slowest.Round(time.Microsecond), held, slow)

	// The held connections are still good.
	for _, i := range []int{0, held / 2, held - 1} {
		cx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := pb.NewKeywardClient(conns[i]).Status(cx, &pb.StatusRequest{})
		cancel()
		if err != nil {
			t.Errorf("held connection %d after the load: %v", i, err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	for _, c := range slowConns {
		c.Close()
	}
	connsStillServe(t, r.sock, "conns/k")
}

// TestManyConnectionsSlowOverLimit: 60 clients that never finish the
// handshake, more than max_connections (50), are cut off after
// handshake_timeout, and clients queued behind them are served within a
// few seconds.
func TestManyConnectionsSlowOverLimit(t *testing.T) {
	const slow, normal = 60, 4
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.MaxConnections = 50
		c.Limits.HandshakeTimeout = config.Duration{Duration: 500 * time.Millisecond}
	})
	if _, err := dial(t, r.sock).CreateKey(context.Background(), &pb.CreateKeyRequest{Key: "conns/slow", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	slowConns := slowClients(t, r.sock, slow)

	// Each slow connection must be closed by the daemon: its read ends in
	// EOF or a reset, not in our own 15 s deadline.
	closedAfter := make([]time.Duration, slow)
	var wg sync.WaitGroup
	for i, c := range slowConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, err := io.Copy(io.Discard, c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				closedAfter[i] = -1
				return
			}
			closedAfter[i] = time.Since(began)
		}()
	}

	calls, slowest, firstServed, errs := normalLoad(t, r.sock, "conns/slow", normal, 10*time.Second, 3*time.Second)
	for _, err := range errs {
		t.Error(err)
	}
	if len(firstServed) != normal {
		t.Fatalf("only %d of %d normal clients served", len(firstServed), normal)
	}
	wg.Wait()
	var last time.Duration
	for i, d := range closedAfter {
		if d < 0 {
			t.Errorf("slow client %d still open after 15 s", i)
		}
		last = max(last, d)
	}
	t.Logf("%d slow clients over max_connections=50 all cut off by %v; %d normal clients first served after %v; then %d calls, slowest %v",
		slow, last.Round(time.Millisecond), normal, firstServed, calls, slowest.Round(time.Microsecond))
	connsStillServe(t, r.sock, "conns/slow")
}
