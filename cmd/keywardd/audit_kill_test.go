package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/audit"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// TestAuditSurvivesKill: whatever audit_sync says, every wrap keywardd
// acknowledged before a SIGKILL has its audit record after the restart
// ("fsync": on disk before the reply; "write": in the kernel before the
// reply, which outlives the process), and the chain verifies. One client
// wraps one call at a time, so at most one record per kill may exist
// without an acknowledgement (the call in flight), never the reverse.
func TestAuditSurvivesKill(t *testing.T) {
	softhsmtest.Need(t, tok)
	for _, mode := range []string{"fsync", "write"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "k.sock")
			cfg := configFile(t, dir, sock, "")
			body, err := os.ReadFile(cfg)
			if err != nil {
				t.Fatal(err)
			}
			// Top-level keys go before the first table.
			body = append([]byte(fmt.Sprintf("audit_sync = %q\n", mode)), body...)
			if err := os.WriteFile(cfg, body, 0o600); err != nil {
				t.Fatal(err)
			}
			auditPath := filepath.Join(dir, "audit.log")
			key := fmt.Sprintf("killaudit/%s-%d", mode, time.Now().UnixNano()%1e9)

			const kills = 5
			acked := 0
			for i := range kills + 1 {
				d := launchDaemon(t, sock, cfg)
				if i == 0 {
					if _, err := d.c.CreateKey(context.Background(), &pb.CreateKeyRequest{Key: key, KeyType: "aes-256-gcm"}); err != nil {
						t.Fatal(err)
					}
				}
				if i == kills {
					if err := d.stop(syscall.SIGTERM); err != nil {
						t.Fatalf("keywardd exit after SIGTERM: %v\n%s", err, d.stderr)
					}
					break
				}
				done := make(chan int)
				go func() {
					n := 0
					for {
						if _, err := d.c.Wrap(context.Background(), &pb.WrapRequest{Key: key, Plaintext: []byte("x")}); err != nil {
							done <- n
							return
						}
						n++
					}
				}()
				time.Sleep(time.Duration(20+rand.IntN(130)) * time.Millisecond)
				d.stop(syscall.SIGKILL)
				acked += <-done
			}

			files, _, err := audit.Chain(auditPath)
			if err != nil {
				t.Fatal(err)
			}
			res, err := audit.Verify(files...)
			if err != nil {
				t.Fatalf("audit verify: %v", err)
			}
			recorded := 0
			for _, f := range files {
				recorded += countRecords(t, f, "wrap", key, "OK")
			}
			if recorded < acked || recorded > acked+kills {
				t.Fatalf("%d wraps acknowledged across %d kills, %d OK wrap records (want %d..%d)", acked, kills, recorded, acked, acked+kills)
			}
			t.Logf("%d wraps acknowledged across %d kills, %d recorded; chain of %d records verifies", acked, kills, recorded, res.Records)
		})
	}
}

// countRecords counts the records of file with that op, key and result.
func countRecords(t *testing.T, file, op, key, result string) int {
	t.Helper()
	lines, err := audit.FileLines(file)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range lines {
		var r struct{ Op, Key, Result string }
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if r.Op == op && r.Key == key && r.Result == result {
			n++
		}
	}
	return n
}
