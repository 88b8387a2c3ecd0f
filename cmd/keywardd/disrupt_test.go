package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// disruptClient is what one load goroutine saw.
type disruptClient struct {
	ok, unavailable int
	nOther          int
	other, wrong    []string
	firstFail       time.Time // first failure, zero if none
	lastFail        time.Time // end of the last failed call
	okAfterRestore  time.Time // first success that began after the restore
	kept            []crashBlob
}

// TestTokenDisruptionThroughDaemon: the token directory of a serving
// keywardd is deleted under load from 4 clients and restored from a copy
// 500 ms later (what restoring a backup does). Clients see only OK or
// UNAVAILABLE/BACKEND_UNAVAILABLE, never a wrong plaintext; they are
// answered OK again after the restore with no daemon restart (within 30 s,
// a bound that ends a hang; the time it took is logged); and every blob
// wrapped before the disruption still unwraps.
func TestTokenDisruptionThroughDaemon(t *testing.T) {
	softhsmtest.Need(t, tok)
	label := fmt.Sprintf("disrupt-%d", time.Now().UnixNano()%1e9)
	pin, err := tok.InitToken(label)
	if err != nil {
		t.Fatal(err)
	}
	tokenDir, err := tok.TokenDirOf(label)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "k.sock")
	d := launchDaemon(t, sock, writeConfig(t, dir, sock, label, pinFile, ""))
	ctx := context.Background()
	names := []string{"disrupt/a", "disrupt/b"}
	for _, n := range names {
		if _, err := d.c.CreateKey(ctx, &pb.CreateKeyRequest{Key: n, KeyType: "aes-256-gcm"}); err != nil {
			t.Fatal(err)
		}
	}

	var restoredAt atomic.Pointer[time.Time]
	var disrupting atomic.Bool // from the delete on: blobs are no longer "before the disruption"
	var stop atomic.Bool
	var recoveredClients atomic.Int32
	var keptBefore atomic.Int32 // clients that kept a blob before the disruption
	clients := make([]*disruptClient, 4)
	var wg sync.WaitGroup
	for g := range clients {
		cl := &disruptClient{}
		clients[g] = cl
		conn := dial(t, sock)
		wg.Add(1)
		go func() {
			defer wg.Done()
			call := func(f func(context.Context) error) (error, time.Time) {
				began := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second) // ends a hang
				defer cancel()
				return f(cctx), began
			}
			fail := func(what string, err error) {
				now := time.Now()
				if cl.firstFail.IsZero() {
					cl.firstFail = now
				}
				cl.lastFail = now
				if st, _ := status.FromError(err); st.Code() == codes.Unavailable && reasonOf(err) == "BACKEND_UNAVAILABLE" {
					cl.unavailable++
				} else if cl.nOther++; len(cl.other) < 5 {
					cl.other = append(cl.other, fmt.Sprintf("%s: %v (reason %s)", what, err, reasonOf(err)))
				}
				time.Sleep(5 * time.Millisecond)
			}
			for i := 0; !stop.Load(); i++ {
				name := names[(g+i)%2]
				pt := fmt.Appendf(nil, "%s/%d/%d", name, g, i)
				wctx := map[string]string{"g": fmt.Sprint(g)}
				var w *pb.WrapResponse
				err, began := call(func(c context.Context) (err error) {
					w, err = conn.Wrap(c, &pb.WrapRequest{Key: name, Plaintext: pt, Context: wctx})
					return err
				})
				if err != nil {
					fail("wrap", err)
					continue
				}
				var u *pb.UnwrapResponse
				err, _ = call(func(c context.Context) (err error) {
					u, err = conn.Unwrap(c, &pb.UnwrapRequest{Ciphertext: w.Ciphertext, Context: wctx})
					return err
				})
				if err != nil {
					fail("unwrap", err)
					continue
				}
				if u.Key != name || u.Version != w.Version || !bytes.Equal(u.Plaintext, pt) {
					cl.wrong = append(cl.wrong, fmt.Sprintf("wrapped %q with %s v%d, unwrapped %q with %s v%d", pt, name, w.Version, u.Plaintext, u.Key, u.Version))
					continue
				}
				cl.ok++
				if r := restoredAt.Load(); r != nil && cl.okAfterRestore.IsZero() && began.After(*r) {
					cl.okAfterRestore = time.Now()
					recoveredClients.Add(1)
				}
				if !disrupting.Load() && i%10 == 0 {
					if len(cl.kept) == 0 {
						keptBefore.Add(1)
					}
					cl.kept = append(cl.kept, crashBlob{key: name, version: w.Version, pt: pt, ctx: wctx, blob: w.Ciphertext})
				}
			}
		}()
	}

	// The load runs until every client has a blob from before.
	for end := time.Now().Add(30 * time.Second); int(keptBefore.Load()) < len(clients) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	// Delete the token directory: move it out of the tokendir in one
	// rename (SoftHSM2 keeps re-creating files in it, so rm -rf races), and
	// keep a copy outside the tokendir (two token directories with one
	// serial inside the tokendir abort SoftHSM2's C_Initialize).
	backupParent := t.TempDir()
	backup := filepath.Join(backupParent, "token")
	if out, err := exec.Command("cp", "-a", tokenDir, backup).CombinedOutput(); err != nil {
		t.Fatalf("backup: %v %s", err, out)
	}
	disrupting.Store(true)
	deletedAt := time.Now()
	if err := os.Rename(tokenDir, filepath.Join(backupParent, "deleted")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	// Restore: whatever SoftHSM2 re-created meanwhile goes; the staged copy
	// (outside the tokendir, same file system) comes back in one rename.
	staged := filepath.Join(backupParent, "staged")
	if out, err := exec.Command("cp", "-a", backup, staged).CombinedOutput(); err != nil {
		t.Fatalf("stage: %v %s", err, out)
	}
	os.RemoveAll(tokenDir)
	if err := os.Rename(staged, tokenDir); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	restoredAt.Store(&restored)

	// Every client must be answered OK again after the restore.
	deadline := restored.Add(30 * time.Second)
	for time.Now().Before(deadline.Add(30 * time.Second)) { // + one call's deadline
		if int(recoveredClients.Load()) == len(clients) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	var ok, unavailable int
	var firstFail, lastFail, recovered time.Time
	var kept []crashBlob
	for g, cl := range clients {
		ok += cl.ok
		unavailable += cl.unavailable
		kept = append(kept, cl.kept...)
		if cl.nOther > 0 {
			t.Errorf("client %d: %d answers other than OK and UNAVAILABLE/BACKEND_UNAVAILABLE, e.g. %q", g, cl.nOther, cl.other)
		}
		if len(cl.wrong) > 0 {
			t.Errorf("client %d: WRONG RESULTS: %q", g, cl.wrong)
		}
		switch {
		case cl.okAfterRestore.IsZero():
			t.Errorf("client %d: no success after the restore", g)
		case cl.okAfterRestore.Sub(restored) > 30*time.Second:
			t.Errorf("client %d: first success %v after the restore, want <= 30s", g, cl.okAfterRestore.Sub(restored))
		}
		recovered = later(recovered, cl.okAfterRestore)
		if !cl.firstFail.IsZero() {
			if firstFail.IsZero() || cl.firstFail.Before(firstFail) {
				firstFail = cl.firstFail
			}
			lastFail = later(lastFail, cl.lastFail)
		}
	}
	select {
	case <-d.exited:
		t.Fatalf("keywardd exited during the disruption: %v\n%s", d.err, d.stderr)
	default:
	}
	outage := "none seen by clients"
	if !firstFail.IsZero() {
		outage = fmt.Sprintf("%v (first failure %v after the delete, last failure %v after the restore)",
			lastFail.Sub(firstFail).Round(time.Millisecond), firstFail.Sub(deletedAt).Round(time.Millisecond), lastFail.Sub(restored).Round(time.Millisecond))
	}
	t.Logf("ok=%d unavailable=%d; outage as clients saw it: %s; every client OK again %v after the restore",
		ok, unavailable, outage, recovered.Sub(restored).Round(time.Millisecond))

	// Blobs wrapped before the disruption still unwrap, with no restart.
	bad := 0
	for _, b := range kept {
		u, err := d.c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: b.blob, Context: b.ctx})
		if err != nil || u.Key != b.key || !bytes.Equal(u.Plaintext, b.pt) {
			bad++
			if bad <= 5 {
				t.Errorf("blob of %s v%d from before the disruption: %v", b.key, b.version, err)
			}
		}
	}
	if len(kept) == 0 {
		t.Error("no blob was wrapped before the disruption")
	}
	t.Logf("%d blobs from before the disruption checked, %d bad", len(kept), bad)
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Errorf("keywardd exit after SIGTERM: %v\n%s", err, d.stderr)
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
