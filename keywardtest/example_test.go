package keywardtest_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"testing"

	"github.com/keyward/keyward/keywardtest"
	"github.com/keyward/keyward/policy"
)

// In a test: Start, then use the Client (or give Socket to the code under
// test); t.Cleanup stops the daemon.
func ExampleStart() {
	var t *testing.T // the test's
	kw := keywardtest.Start(t,
		keywardtest.WithKey("app/db", "aes-256-gcm"),
		keywardtest.WithRules(policy.Rule{UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"app/**"}, Operations: []string{"wrap", "unwrap"}}))
	t.Setenv("KEYWARD_SOCKET", kw.Socket) // for code that dials client.Dial(ctx, "")
}

// Without a test (TestMain, a server shared by several tests): New, and
// Close when done.
func ExampleNew() {
	kw, err := keywardtest.New(keywardtest.WithKey("app/db", "aes-256-gcm"))
	if err != nil {
		log.Fatal(err)
	}
	defer kw.Close()
	ctx := context.Background()
	w, err := kw.Client.Wrap(ctx, "app/db", []byte("s3cr3t"), map[string]string{"app": "demo"})
	if err != nil {
		log.Fatal(err)
	}
	u, err := kw.Client.Unwrap(ctx, w.GetCiphertext(), map[string]string{"app": "demo"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s v%d: %s\n", u.GetKey(), u.GetVersion(), u.GetPlaintext())
	// Output: app/db v1: s3cr3t
}
