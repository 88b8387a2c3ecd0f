package audit

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// freeSpaceChildEnv makes the test binary a child of TestKillInFreeSpace:
// it appends to the log named in the variable until killed.
const freeSpaceChildEnv = "AUDIT_FREE_SPACE_CHILD"

// freeSpaceChild appends batches of 1 to 64 records from 8 goroutines and prints
// "ack ID" for each record once its Append returned nil.
func freeSpaceChild(path string) int {
	l, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "open")
	out.Flush()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				n := 1 + rand.IntN(64)
				rs := make([]Record, n)
				for k := range rs {
					rs[k] = rec(fmt.Sprintf("%d-%d-%d-%d", os.Getpid(), g, i, k))
				}
				if err := l.AppendAll(context.Background(), rs); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				mu.Lock()
				for _, r := range rs {
					fmt.Fprintln(out, "ack", r.RequestID)
				}
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return 0
}

// TestKillInFreeSpace: a process appending batches into the free space is
// SIGKILLed, several times over, mid-write; each restart's Open recovers
// (a partial write into the zeros is a torn tail, moved aside) and no
// acknowledged record is ever lost.
func TestKillInFreeSpace(t *testing.T) {
	if path := os.Getenv(freeSpaceChildEnv); path != "" {
		os.Exit(freeSpaceChild(path))
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	acked := map[string]bool{}
	kills := 6 // make reliability: KEYWARD_CRASH_ITERATIONS=100
	if n, err := strconv.Atoi(os.Getenv("KEYWARD_CRASH_ITERATIONS")); err == nil && n > 0 {
		kills = n
	}
	inFree, torn := 0, 0
	for i := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillInFreeSpace$")
		cmd.Env = append(os.Environ(), freeSpaceChildEnv+"="+path)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() || sc.Text() != "open" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child %d did not open the log: %q", i, sc.Text())
		}
		// Kill after a random number of acknowledgements, mid-stream.
		want := 200 + rand.IntN(2000)
		for n := 0; n < want && sc.Scan(); n++ {
			acked[sc.Text()[len("ack "):]] = true
		}
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		for sc.Scan() { // acknowledged before the kill, still in the pipe
			acked[sc.Text()[len("ack "):]] = true
		}
		cmd.Wait()
		if size, end := fileState(t, path); size > end {
			inFree++
		}
		l, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("Open after kill %d: %v", i, err)
		}
		if rep := l.OpenReport(); rep.TornFile != "" {
			torn++
			t.Logf("kill %d: torn tail of %d bytes moved aside", i, rep.TornBytes)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if inFree == 0 {
		t.Fatal("no kill left the file with free space: the writes under test did not go into it")
	}
	files, _, err := Chain(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(files...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	found := map[string]bool{}
	for _, r := range records(t, files...) {
		found[r.RequestID] = true
	}
	lost := 0
	for id := range acked {
		if !found[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged records missing after %d kills", lost, len(acked), kills)
	}
	t.Logf("%d kills (%d in free space, %d torn writes moved aside), %d records acknowledged, %d in the chain, none lost",
		kills, inFree, torn, len(acked), res.Records)
}
