package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/keywardtest"
)

// The examples run against a real keywardd: keywardtest.New starts a
// private one on a fresh SoftHSM2 token, with the keys they use. An
// application dials the daemon's socket instead: client.Dial(ctx, "")
// uses $KEYWARD_SOCKET, else /run/keyward/keyward.sock.

// daemon starts a private keywardd with keys ("name", "type", ...) and
// returns its socket and a function that stops it.
func daemon(keyArgs ...string) (socket string, stop func()) {
	var opts []keywardtest.Option
	for i := 0; i+1 < len(keyArgs); i += 2 {
		opts = append(opts, keywardtest.WithKey(keyArgs[i], keyArgs[i+1]))
	}
	kw, err := keywardtest.New(opts...)
	if err != nil {
		log.Fatal(err)
	}
	return kw.Socket, func() { kw.Close() }
}

func ExampleDial() {
	socket, stop := daemon()
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, socket) // an application: client.Dial(ctx, "")
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
	fmt.Printf("backend %s, healthy %v\n", st.GetBackend(), st.GetBackendHealthy())
	// Output: backend pkcs11, healthy true
}

// A daemon that is not there: Dial fails at once with ErrUnavailable and
// says why; the Client reconnects on its own after a daemon restart.
func ExampleDial_unavailable() {
	_, err := client.Dial(context.Background(), "/nonexistent/keyward.sock")
	fmt.Println(errors.Is(err, client.ErrUnavailable))
	fmt.Println(err)
	// Output:
	// true
	// dial /nonexistent/keyward.sock: the socket does not exist; is keywardd running? (UNAVAILABLE)
}

// An application keeps a database password wrapped in its configuration
// and unwraps it at start-up. The context binds the blob to its use: the
// same blob unwrapped under another context fails with ErrDecrypt.
func ExampleClient_Wrap() {
	socket, stop := daemon("payments/db-password", "aes-256-gcm")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
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
	fmt.Printf("wrapped with %s v%d\n", w.GetKey(), w.GetVersion())

	u, err := c.Unwrap(ctx, w.GetCiphertext(), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("unwrapped %d bytes\n", len(u.GetPlaintext()))
	clear(u.Plaintext) // ... once the database connection is made

	_, err = c.Unwrap(ctx, w.GetCiphertext(), map[string]string{"app": "reporting"})
	fmt.Println(errors.Is(err, client.ErrDecrypt), client.Reason(err))
	// Output:
	// wrapped with payments/db-password v1
	// unwrapped 28 bytes
	// true DECRYPTION_FAILED
}

// After a rotation, Rewrap moves stored blobs to the newest version
// without the plaintext leaving the daemon.
func ExampleClient_Rewrap() {
	socket, stop := daemon("payments/db-password", "aes-256-gcm")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	w, err := c.Wrap(ctx, "payments/db-password", []byte("s3cr3t"), nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.RotateKey(ctx, "payments/db-password"); err != nil {
		log.Fatal(err)
	}
	r, err := c.Rewrap(ctx, w.GetCiphertext(), nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("v%d -> v%d\n", r.GetPreviousVersion(), r.GetVersion())
	// Output: v1 -> v2
}

// Envelope encryption for data over 64 KiB: a fresh data key encrypts the
// data locally; only its wrapped form is stored beside the data.
func ExampleClient_GenerateDataKey() {
	socket, stop := daemon("files/master", "aes-256-gcm")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	encCtx := map[string]string{"file": "report.pdf"}
	dk, err := c.GenerateDataKey(ctx, "files/master", encCtx, 32, false)
	if err != nil {
		log.Fatal(err)
	}
	defer clear(dk.Plaintext)
	// ... encrypt the file with dk.Plaintext (AES-256-GCM), store dk.Ciphertext with it ...
	fmt.Printf("data key %d bytes\n", len(dk.GetPlaintext()))

	// Later: recover the data key from the stored blob.
	u, err := c.Unwrap(ctx, dk.GetCiphertext(), encCtx)
	if err != nil {
		log.Fatal(err)
	}
	defer clear(u.Plaintext)
	fmt.Println("same key:", string(u.GetPlaintext()) == string(dk.GetPlaintext()))
	// Output:
	// data key 32 bytes
	// same key: true
}

func ExampleClient_Sign() {
	socket, stop := daemon("releases/signing", "ed25519")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	msg := []byte("release v1.2.3 sha256:...")
	s, err := c.Sign(ctx, "releases/signing", msg)
	if err != nil {
		log.Fatal(err)
	}
	valid, version, err := c.Verify(ctx, "releases/signing", 0, msg, s.GetSignature())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("valid:", valid, "version:", version)
	valid, _, err = c.Verify(ctx, "releases/signing", 0, []byte("tampered"), s.GetSignature())
	fmt.Println("tampered valid:", valid, err) // an invalid signature is not an error
	// Output:
	// valid: true version: 1
	// tampered valid: false <nil>
}

// Anyone can verify with the public key, without the daemon.
func ExampleClient_PublicKey() {
	socket, stop := daemon("releases/signing", "ecdsa-p256")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	pk, err := c.PublicKey(ctx, "releases/signing", 0)
	if err != nil {
		log.Fatal(err)
	}
	// pk.GetPublicKeyDer() is a PKIX public key: x509.ParsePKIXPublicKey.
	fmt.Println(pk.GetKeyType(), pk.GetVersion())
	// Output: ecdsa-p256 1
}

// Store only a MAC: a service that hands out API tokens keeps, per token,
// its HMAC and the key version that made it, never the token. A presented
// token is checked by the daemon (constant time, in the device); a leaked
// table of MACs is useless without the device, and rotating the key does
// not invalidate stored MACs as long as their version stays enabled.
func ExampleClient_Mac() {
	socket, stop := daemon("api/tokens", "hmac-sha256")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
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
	for _, presented := range []string{"tok_7f3a9c...", "tok_guess"} {
		valid, _, err := c.VerifyMac(ctx, "api/tokens", stored.Version, []byte(presented), stored.MAC)
		if err != nil {
			log.Fatal(err) // the daemon could not check (not: the token is wrong)
		}
		fmt.Printf("%s valid: %v\n", presented, valid)
	}
	// Output:
	// tok_7f3a9c... valid: true
	// tok_guess valid: false
}

// Many small items in one call; each item succeeds or fails on its own.
func ExampleClient_BatchWrap() {
	socket, stop := daemon("users/pii", "aes-256-gcm")
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	items := []*keywardv1.WrapRequest{
		{Key: "users/pii", Plaintext: []byte("alice@example.com"), Context: map[string]string{"user": "1"}},
		{Key: "users/missing", Plaintext: []byte("bob@example.com"), Context: map[string]string{"user": "2"}},
	}
	results, err := c.BatchWrap(ctx, items)
	if err != nil {
		log.Fatal(err) // the whole call failed
	}
	for i, r := range results {
		if r.Err != nil {
			fmt.Printf("item %d: %v\n", i, errors.Is(r.Err, client.ErrNotFound))
			continue
		}
		fmt.Printf("item %d: wrapped with v%d\n", i, r.Value.GetVersion())
	}
	// Output:
	// item 0: wrapped with v1
	// item 1: true
}

// Key administration, allowed by the policy's key.* operations.
func ExampleClient_CreateKey() {
	socket, stop := daemon()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.CreateKey(ctx, "payments/db-password", "aes-256-gcm"); err != nil {
		log.Fatal(err)
	}
	_, err = c.CreateKey(ctx, "payments/db-password", "aes-256-gcm")
	fmt.Println("again:", errors.Is(err, client.ErrKeyExists))
	if _, err := c.RotateKey(ctx, "payments/db-password"); err != nil {
		log.Fatal(err)
	}
	if _, err := c.SetVersionState(ctx, "payments/db-password", 1, false); err != nil {
		log.Fatal(err)
	}
	info, err := c.DescribeKey(ctx, "payments/db-password")
	if err != nil {
		log.Fatal(err)
	}
	for _, v := range info.GetVersions() {
		fmt.Printf("v%d %s\n", v.GetVersion(), v.GetState())
	}
	list, err := c.ListKeys(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(list), "key")
	// Output:
	// again: true
	// v1 DISABLED
	// v2 ENABLED
	// 1 key
}

// Every error wraps one sentinel; Reason gives the daemon's reason.
func ExampleReason() {
	socket, stop := daemon()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Wrap(ctx, "no/such-key", []byte("x"), nil)
	fmt.Println(errors.Is(err, client.ErrNotFound), client.Reason(err))
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Op, e.Code)
	}
	// Output:
	// true KEY_NOT_FOUND
	// wrap no/such-key NotFound
}
