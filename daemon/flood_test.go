package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/daemon"
)

// floodEnv makes the test binary an HTTP/2 attacker (h2Flood) instead of
// running tests.
const floodEnv = "KEYWARD_DAEMON_FLOOD"

// floodReport is what h2Flood prints, as one JSON line, once every stream
// it opened was either refused by the daemon or given all its bytes, and
// again (final) once every admitted stream was cut.
type floodReport struct {
	Opened    int            `json:"opened"`
	Refused   map[string]int `json:"refused"` // grpc-status or RST code -> streams
	FullSent  int            `json:"full_sent"`
	Answered  int            `json:"answered"`  // response headers (complete requests)
	Delivered int            `json:"delivered"` // answered streams that then ended
	Cut       int            `json:"cut"`       // full-sent streams the daemon ended
	Final     bool           `json:"final"`
}

// h2Flood opens $FLOOD_CONNS connections to $KW_SOCK with $FLOOD_STREAMS
// streams each; every stream declares a gRPC message of $FLOOD_SIZE bytes,
// sends all but its last byte (honouring flow control) and never finishes.
// It prints a floodReport when nothing more can be sent, and a final one
// when the daemon has ended every stream, then holds the connections until
// stdin closes. With $FLOOD_SIZE 0 each stream is a complete Status call,
// and the flooder grants no flow-control window: no reply can be sent. It
// reports when every stream was refused or answered with headers.
func h2Flood() int {
	conns, _ := strconv.Atoi(os.Getenv("FLOOD_CONNS"))
	streams, _ := strconv.Atoi(os.Getenv("FLOOD_STREAMS"))
	size, _ := strconv.Atoi(os.Getenv("FLOOD_SIZE"))
	var mu sync.Mutex
	rep := floodReport{Refused: map[string]int{}}
	var settled, final sync.WaitGroup
	for range conns {
		settled.Add(1)
		if size != 0 { // held replies never end: one report only
			final.Add(1)
		}
		c, err := net.Dial("unix", os.Getenv("KW_SOCK"))
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		f := &flooder{c: c, streams: streams, size: size, mu: &mu, rep: &rep, settled: &settled, final: &final}
		go f.run()
	}
	settled.Wait()
	out := func() {
		mu.Lock()
		b, _ := json.Marshal(rep)
		mu.Unlock()
		fmt.Println(string(b))
	}
	out()
	if size != 0 {
		final.Wait()
		mu.Lock()
		rep.Final = true
		mu.Unlock()
		out()
	}
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

type flooder struct {
	c              net.Conn
	fr             *http2.Framer
	wmu            sync.Mutex // the framer's writes
	streams, size  int
	mu             *sync.Mutex // guards rep and the flow state below
	rep            *floodReport
	settled, final *sync.WaitGroup

	cond        *sync.Cond
	connWindow  int
	initWindow  int
	windows     map[uint32]int // stream -> send window
	left        map[uint32]int // stream -> bytes still to send
	ended       map[uint32]bool
	settledDone bool
	answered    map[uint32]bool // this connection's streams answered with headers
	delivered   int             // and of those, ended
}

func (f *flooder) run() {
	f.cond = sync.NewCond(f.mu)
	f.fr = http2.NewFramer(f.c, f.c)
	f.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f.connWindow, f.initWindow = 65535, 65535
	f.windows, f.left, f.ended, f.answered = map[uint32]int{}, map[uint32]int{}, map[uint32]bool{}, map[uint32]bool{}
	f.c.Write([]byte(http2.ClientPreface))
	if f.size == 0 { // takes no reply data: a window of 0
		f.write(func() error { return f.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}) })
	} else {
		f.write(func() error { return f.fr.WriteSettings() })
	}
	go f.read()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	f.mu.Lock()
	method := "/keyward.v1.Keyward/Wrap"
	if f.size == 0 {
		method = "/keyward.v1.Keyward/Status"
	}
	for i := range f.streams {
		id := uint32(2*i + 1)
		hb.Reset()
		for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
			{":authority", "keyward"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		f.windows[id], f.left[id] = f.initWindow, 5+f.size-1
		f.rep.Opened++
		f.write(func() error {
			return f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
		})
		if f.size == 0 { // an empty message, and the end of the request
			f.left[id] = 0
			f.write(func() error { return f.fr.WriteData(id, true, make([]byte, 5)) })
		}
	}
	f.mu.Unlock()
	if f.size == 0 {
		return // settled by the reader once every stream is answered or refused
	}
	f.send()
}

func (f *flooder) write(w func() error) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return w()
}

// send writes DATA round-robin while any stream has bytes and window.
func (f *flooder) send() {
	buf := make([]byte, 16384)
	binary.BigEndian.PutUint32(buf[1:5], uint32(f.size)) // the first chunk starts with the gRPC header
	settledOnce := sync.OnceFunc(f.settled.Done)
	defer settledOnce()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		progress := false
		for id, left := range f.left {
			if f.ended[id] || left == 0 {
				continue
			}
			n := min(left, f.windows[id], f.connWindow, len(buf))
			if n <= 0 {
				continue
			}
			chunk := buf[:n]
			if left != 5+f.size-1 { // past the header: zeros
				chunk = make([]byte, n)
			}
			f.left[id] -= n
			f.windows[id] -= n
			f.connWindow -= n
			if f.left[id] == 0 {
				f.rep.FullSent++
			}
			f.mu.Unlock()
			err := f.write(func() error { return f.fr.WriteData(id, false, chunk) })
			f.mu.Lock()
			if err != nil {
				return
			}
			progress = true
		}
		if progress {
			continue
		}
		if f.allSettled() {
			settledOnce()
		}
		f.cond.Wait()
	}
}

// allSettled: every stream refused, ended, or fully sent. Caller holds mu.
func (f *flooder) allSettled() bool {
	for id, left := range f.left {
		if left > 0 && !f.ended[id] {
			return false
		}
	}
	return true
}

func (f *flooder) read() {
	finalOnce := sync.OnceFunc(f.final.Done)
	if f.size == 0 {
		finalOnce = func() {}
	}
	defer finalOnce()
	for {
		fr, err := f.fr.ReadFrame()
		if err != nil {
			return
		}
		f.mu.Lock()
		switch fr := fr.(type) {
		case *http2.SettingsFrame:
			if !fr.IsAck() {
				if v, ok := fr.Value(http2.SettingInitialWindowSize); ok {
					for id := range f.windows {
						f.windows[id] += int(v) - f.initWindow
					}
					f.initWindow = int(v)
				}
				f.mu.Unlock()
				f.write(f.fr.WriteSettingsAck)
				f.mu.Lock()
			}
		case *http2.WindowUpdateFrame:
			if fr.StreamID == 0 {
				f.connWindow += int(fr.Increment)
			} else {
				f.windows[fr.StreamID] += int(fr.Increment)
			}
		case *http2.PingFrame:
			if !fr.IsAck() {
				f.mu.Unlock()
				f.write(func() error { return f.fr.WritePing(true, fr.Data) })
				f.mu.Lock()
			}
		case *http2.MetaHeadersFrame:
			if !fr.StreamEnded() && !f.answered[fr.StreamID] {
				f.answered[fr.StreamID] = true
				f.rep.Answered++
			}
			if fr.StreamEnded() {
				f.end(fr.StreamID, "status "+fr.PseudoValue("status")+" grpc-status "+grpcStatusOf(fr))
			}
		case *http2.RSTStreamFrame:
			f.end(fr.StreamID, "rst "+fr.ErrCode.String())
		case *http2.GoAwayFrame:
			f.mu.Unlock()
			return
		}
		done := len(f.ended) == f.streams
		if f.size == 0 && len(f.ended)+len(f.answered)-f.delivered >= f.streams && !f.settledDone {
			f.settledDone = true
			f.settled.Done()
		}
		f.cond.Broadcast()
		f.mu.Unlock()
		if done {
			finalOnce()
		}
	}
}

func grpcStatusOf(fr *http2.MetaHeadersFrame) string {
	for _, h := range fr.Fields {
		if h.Name == "grpc-status" {
			return h.Value
		}
	}
	return "?"
}

// end records the daemon ending a stream: refused if it had not been given
// all its bytes, cut otherwise. Caller holds mu.
func (f *flooder) end(id uint32, how string) {
	if f.ended[id] {
		return
	}
	f.ended[id] = true
	if f.answered[id] {
		f.rep.Delivered++
		f.delivered++
		return
	}
	if f.left[id] == 0 && f.size != 0 {
		f.rep.Cut++
		return
	}
	f.rep.Refused[how]++
}

// TestHalfSentFlood: a uid that no rule names opens 5 connections of 256
// streams, each declaring a 4 MiB message and sending all of it but its
// last byte. The daemon buffers the messages of at most 2 of them (the rest
// are refused when they open), cuts those at limits.receive_timeout, stays
// under 256 MiB resident, serves a granted caller meanwhile, and leaves one
// summary record per result instead of one per stream.
func TestHalfSentFlood(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the attacker as another uid")
	}
	const conns, streams, size = 5, 256, 4 << 20
	r := start(t, testRules(), func(c *config.Config) {
		c.Limits.ReceiveTimeout = config.Duration{Duration: time.Second}
		c.AuditRefusalInterval = config.Duration{Duration: time.Second}
	})
	ctx := context.Background()
	c := dial(t, r.sock)
	if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: "flood/k", KeyType: "aes-256-gcm"}); err != nil {
		t.Fatal(err)
	}
	before, _ := vmRSS(t)

	cmd := exec.Command(childBinary(t))
	cmd.Env = append(os.Environ(), floodEnv+"=1", "KW_SOCK="+r.sock,
		fmt.Sprintf("FLOOD_CONNS=%d", conns), fmt.Sprintf("FLOOD_STREAMS=%d", streams), fmt.Sprintf("FLOOD_SIZE=%d", size))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: outsideUID, Gid: socketGID}}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	next := func() floodReport {
		t.Helper()
		if !lines.Scan() {
			t.Fatal("attacker died")
		}
		var rep floodReport
		if err := json.Unmarshal(lines.Bytes(), &rep); err != nil {
			t.Fatalf("attacker: %s", lines.Text())
		}
		return rep
	}

	settled := next()
	rss, _ := vmRSS(t)
	t.Logf("flood settled: %+v; daemon process RSS %d -> %d MiB", settled, before>>10, rss>>10)
	if settled.Opened != conns*streams {
		t.Fatalf("attacker opened %d streams, want %d", settled.Opened, conns*streams)
	}
	if settled.FullSent > 2 {
		t.Errorf("%d streams were given all their bytes, want at most 2 for a caller no rule names", settled.FullSent)
	}
	if rss > 256<<10 {
		t.Errorf("RSS %d MiB with the flood held, want under 256", rss>>10)
	}
	// A granted caller is served meanwhile.
	w, err := c.Wrap(ctx, &pb.WrapRequest{Key: "flood/k", Plaintext: []byte("x")})
	if err != nil {
		t.Fatalf("granted caller during the flood: %v", err)
	}
	if _, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext}); err != nil {
		t.Fatalf("granted caller during the flood: %v", err)
	}

	// The admitted streams are cut at the receive deadline.
	final := next()
	if final.Cut != settled.FullSent {
		t.Errorf("%d of %d fully sent streams cut", final.Cut, settled.FullSent)
	}
	t.Logf("all streams ended: %+v", final)

	// Summaries, not one record per stream.
	logPath := filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log")
	want := map[string]bool{"TOO_MANY_REQUESTS": false, daemon.ResultReceiveTimeout: false}
	deadline := time.Now().Add(30 * time.Second)
	for {
		recs := readAudit(t, logPath)
		perStream := 0
		for _, a := range recs {
			if a.Peer.UID != outsideUID {
				continue
			}
			if a.Op != daemon.OpRefused {
				perStream++
				continue
			}
			if _, ok := want[a.Result]; ok && strings.Contains(a.Reason, "ops=wrap:") {
				want[a.Result] = true
			}
		}
		if perStream > 0 {
			t.Fatalf("%d records of single refused streams", perStream)
		}
		if want["TOO_MANY_REQUESTS"] && want[daemon.ResultReceiveTimeout] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("summary records missing: %v", want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestUnreadReplies: a granted caller that never takes its replies (its
// HTTP/2 window is 0) cannot make keywardd hold more than
// max_concurrent_per_uid of them, over 4 connections of 64 calls each: a
// call counts until its trailers are written, and the rest are refused
// when they open.
func TestUnreadReplies(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the attacker as another uid")
	}
	const conns, streams, limit = 4, 64, 16
	r := start(t, testRules(), func(c *config.Config) { c.Limits.MaxConcurrentPerUID = limit })
	cmd := exec.Command(childBinary(t))
	cmd.Env = append(os.Environ(), floodEnv+"=1", "KW_SOCK="+r.sock,
		fmt.Sprintf("FLOOD_CONNS=%d", conns), fmt.Sprintf("FLOOD_STREAMS=%d", streams), "FLOOD_SIZE=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: appUID, Gid: socketGID}}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatal("attacker died")
	}
	var rep floodReport
	if err := json.Unmarshal(lines.Bytes(), &rep); err != nil {
		t.Fatalf("attacker: %s", lines.Text())
	}
	t.Logf("%+v", rep)
	if held := rep.Answered - rep.Delivered; held > limit {
		t.Errorf("%d calls handled whose replies the caller never took, want at most %d", held, limit)
	}
	if rep.Refused["status 200 grpc-status 8"] == 0 {
		t.Errorf("no call refused: %+v", rep)
	}
	c := dial(t, r.sock)
	if _, err := c.Status(ctxTimeout(t, 30*time.Second), &pb.StatusRequest{}); err != nil {
		t.Fatalf("another uid meanwhile: %v", err)
	}
}
