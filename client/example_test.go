package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/keyward/keyward/client"
)

// These examples need a running keywardd, so they are compiled but not run.

func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, client.DefaultSocket)
	switch {
	case errors.Is(err, client.ErrUnavailable):
		log.Fatalf("keywardd is not running: %v", err)
	case errors.Is(err, client.ErrPermissionDenied):
		log.Fatalf("this user may not open keywardd's socket: %v", err)
	case err != nil:
		log.Fatal(err)
	}
	defer c.Close()

	st, err := c.Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("keywardd %s, %s backend, healthy %v; it sees me as uid %d\n",
		st.GetVersion(), st.GetBackend(), st.GetBackendHealthy(), st.GetYou().GetUid())
}

// An application keeps a database password wrapped in its configuration
// and unwraps it at start-up. The context binds the blob to its use: the
// same blob unwrapped under another context fails with ErrDecrypt.
func ExampleClient_Wrap() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	encCtx := map[string]string{"app": "billing", "field": "db-password"}
	w, err := c.Wrap(ctx, "payments/db-password", []byte("correct horse battery staple"), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	// w.Ciphertext can be stored anywhere; it is useless without the device.
	fmt.Printf("wrapped with %s v%d: %d bytes\n", w.GetKey(), w.GetVersion(), len(w.GetCiphertext()))

	u, err := c.Unwrap(ctx, w.GetCiphertext(), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	defer clear(u.Plaintext)
	// ... connect to the database with u.Plaintext ...

	_, err = c.Unwrap(ctx, w.GetCiphertext(), map[string]string{"app": "reporting"})
	fmt.Println(errors.Is(err, client.ErrDecrypt)) // true
}

// Store only a MAC: a service that hands out API tokens keeps, per token,
// its HMAC and the key version that made it, never the token. A presented
// token is checked by the daemon (constant time, in the device); a leaked
// table of MACs is useless without the device, and rotating the key does
// not invalidate stored MACs as long as their version stays enabled.
func ExampleClient_Mac() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.DefaultSocket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	token := []byte("tok_7f3a9c...") // given to the user once, then forgotten
	m, err := c.Mac(ctx, "api/tokens", token)
	if err != nil {
		log.Fatal(err)
	}
	stored := struct {
		Version uint32
		MAC     []byte
	}{m.GetVersion(), m.GetMac()} // what goes into the database

	// Later, a request presents a token.
	presented := []byte("tok_7f3a9c...")
	valid, _, err := c.VerifyMac(ctx, "api/tokens", stored.Version, presented, stored.MAC)
	if err != nil {
		log.Fatal(err) // the daemon could not check (not: the token is wrong)
	}
	fmt.Println("token valid:", valid)
}
