package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/envelope"
	"github.com/keyward/keyward/keys"
)

// fakeDaemon is keywardd's API in software, for testing the CLI without the
// daemon: real envelope blobs, AES-GCM, HMAC, ECDSA and Ed25519 in Go, the
// version rules of DESIGN.md, and errors with keyward reasons. It allows
// every caller everything but AdoptKey (PERMISSION_DENIED), and can be told
// to fail every call with a given reason.
type fakeDaemon struct {
	keywardv1.UnimplementedKeywardServer
	mu      sync.Mutex
	keys    map[string]*fakeKey
	started time.Time
	failAll keywardv1.ErrorReason // when set, every call fails with it
}

type fakeKey struct {
	typ      keys.Type
	created  time.Time
	min      uint32
	versions []*fakeVersion
}

type fakeVersion struct {
	state   keywardv1.VersionState
	created time.Time
	secret  []byte // AES or HMAC key
	ecdsa   *ecdsa.PrivateKey
	ed      ed25519.PrivateKey
}

// serveFake starts a fake daemon on a socket in a temp dir.
func serveFake(t *testing.T) (*fakeDaemon, string) {
	t.Helper()
	f := &fakeDaemon{keys: map[string]*fakeKey{}, started: time.Now()}
	dir, err := os.MkdirTemp("", "kw-fake-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "k.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		f.mu.Lock()
		r := f.failAll
		f.mu.Unlock()
		if r != 0 {
			msg := "not allowed"
			if r != keywardv1.ErrorReason_PERMISSION_DENIED {
				msg = "injected failure"
			}
			return nil, kwErr(r, "%s", msg)
		}
		return h(ctx, req)
	}))
	keywardv1.RegisterKeywardServer(g, f)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return f, path
}

func (f *fakeDaemon) fail(r keywardv1.ErrorReason) {
	f.mu.Lock()
	f.failAll = r
	f.mu.Unlock()
}

func kwErr(r keywardv1.ErrorReason, format string, a ...any) error {
	st, err := status.New(r.Code(), fmt.Sprintf(format, a...)).WithDetails(&errdetails.ErrorInfo{
		Domain: keywardv1.ErrorDomain, Reason: r.String(),
	})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func newVersion(t keys.Type) (*fakeVersion, error) {
	v := &fakeVersion{state: keywardv1.VersionState_ENABLED, created: time.Now()}
	var err error
	switch t {
	case keys.AES256GCM, keys.HMACSHA256:
		v.secret = make([]byte, 32)
		rand.Read(v.secret)
	case keys.ECDSAP256:
		v.ecdsa, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case keys.Ed25519:
		_, v.ed, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, kwErr(keywardv1.ErrorReason_UNSUPPORTED, "key type %s is not supported by this backend", t)
	}
	return v, err
}

func (k *fakeKey) info(name string) *keywardv1.KeyInfo {
	ki := &keywardv1.KeyInfo{Key: name, KeyType: string(k.typ), Created: timestamppb.New(k.created), MinDecryptVersion: k.min}
	for i, v := range k.versions {
		ki.Versions = append(ki.Versions, &keywardv1.KeyVersion{Version: uint32(i + 1), State: v.state, Created: timestamppb.New(v.created)})
	}
	return ki
}

// lookup finds a key of one of the wanted types.
func (f *fakeDaemon) lookup(name string, want ...keys.Type) (*fakeKey, error) {
	if err := keys.ValidateName(name); err != nil {
		return nil, kwErr(keywardv1.ErrorReason_INVALID_KEY_NAME, "invalid key name")
	}
	k := f.keys[name]
	if k == nil {
		return nil, kwErr(keywardv1.ErrorReason_KEY_NOT_FOUND, "key %s not found", name)
	}
	for _, t := range want {
		if k.typ == t {
			return k, nil
		}
	}
	if len(want) == 0 {
		return k, nil
	}
	return nil, kwErr(keywardv1.ErrorReason_WRONG_KEY_TYPE, "key %s is %s", name, k.typ)
}

// newest returns the newest enabled version.
func (k *fakeKey) newest(name string) (uint32, *fakeVersion, error) {
	for i := len(k.versions) - 1; i >= 0; i-- {
		if k.versions[i].state == keywardv1.VersionState_ENABLED {
			return uint32(i + 1), k.versions[i], nil
		}
	}
	return 0, nil, kwErr(keywardv1.ErrorReason_NO_ENABLED_VERSION, "key %s has no enabled version", name)
}

// usable returns version v for unwrap or verify.
func (k *fakeKey) usable(name string, v uint32) (*fakeVersion, error) {
	if v == 0 || int(v) > len(k.versions) {
		return nil, kwErr(keywardv1.ErrorReason_KEY_NOT_FOUND, "key %s v%d not found", name, v)
	}
	switch k.versions[v-1].state {
	case keywardv1.VersionState_DISABLED:
		return nil, kwErr(keywardv1.ErrorReason_VERSION_DISABLED, "key %s v%d is disabled", name, v)
	case keywardv1.VersionState_DESTROYED:
		return nil, kwErr(keywardv1.ErrorReason_VERSION_DESTROYED, "key %s v%d is destroyed", name, v)
	}
	if v < k.min {
		return nil, kwErr(keywardv1.ErrorReason_BELOW_MIN_VERSION, "key %s v%d is below the minimum decrypt version %d", name, v, k.min)
	}
	return k.versions[v-1], nil
}

// verifiers returns the versions a verify with version v (0: any) tries.
func (k *fakeKey) verifiers(name string, v uint32) (map[uint32]*fakeVersion, error) {
	if v != 0 {
		fv, err := k.usable(name, v)
		return map[uint32]*fakeVersion{v: fv}, err
	}
	out := map[uint32]*fakeVersion{}
	for i := range k.versions {
		if fv, err := k.usable(name, uint32(i+1)); err == nil {
			out[uint32(i+1)] = fv
		}
	}
	return out, nil
}

func gcm(secret []byte) cipher.AEAD {
	b, _ := aes.NewCipher(secret)
	a, _ := cipher.NewGCM(b)
	return a
}

func (f *fakeDaemon) seal(name string, plaintext []byte, c map[string]string) (uint32, []byte, error) {
	k, err := f.lookup(name, keys.AES256GCM)
	if err != nil {
		return 0, nil, err
	}
	if len(plaintext) > keys.MaxPlaintext {
		return 0, nil, kwErr(keywardv1.ErrorReason_INVALID_REQUEST, "plaintext over 64 KiB")
	}
	v, fv, err := k.newest(name)
	if err != nil {
		return 0, nil, err
	}
	h := envelope.Header{Alg: envelope.AlgPKCS11GCM, Name: name, Version: v, Nonce: make([]byte, 12)}
	rand.Read(h.Nonce)
	aad, err := h.AAD(c)
	if err != nil {
		return 0, nil, kwErr(keywardv1.ErrorReason_INVALID_REQUEST, "bad context")
	}
	blob, err := envelope.Encode(h, gcm(fv.secret).Seal(nil, h.Nonce, plaintext, aad))
	return v, blob, err
}

func (f *fakeDaemon) open(blob []byte, c map[string]string) (string, uint32, []byte, error) {
	h, ct, err := envelope.Decode(blob)
	if err != nil {
		return "", 0, nil, kwErr(keywardv1.ErrorReason_MALFORMED_CIPHERTEXT, "not a keyward blob")
	}
	k, err := f.lookup(h.Name, keys.AES256GCM)
	if err != nil {
		return "", 0, nil, err
	}
	fv, err := k.usable(h.Name, h.Version)
	if err != nil {
		return "", 0, nil, err
	}
	aad, _ := h.AAD(c)
	pt, err := gcm(fv.secret).Open(nil, h.Nonce, ct, aad)
	if err != nil {
		return "", 0, nil, kwErr(keywardv1.ErrorReason_DECRYPTION_FAILED, "decryption failed: wrong context or tampered data")
	}
	return h.Name, h.Version, pt, nil
}

func (f *fakeDaemon) Wrap(_ context.Context, r *keywardv1.WrapRequest) (*keywardv1.WrapResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, blob, err := f.seal(r.GetKey(), r.GetPlaintext(), r.GetContext())
	if err != nil {
		return nil, err
	}
	return &keywardv1.WrapResponse{Ciphertext: blob, Key: r.GetKey(), Version: v}, nil
}

func (f *fakeDaemon) Unwrap(_ context.Context, r *keywardv1.UnwrapRequest) (*keywardv1.UnwrapResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, v, pt, err := f.open(r.GetCiphertext(), r.GetContext())
	if err != nil {
		return nil, err
	}
	return &keywardv1.UnwrapResponse{Plaintext: pt, Key: name, Version: v}, nil
}

func (f *fakeDaemon) Rewrap(_ context.Context, r *keywardv1.RewrapRequest) (*keywardv1.RewrapResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, old, pt, err := f.open(r.GetCiphertext(), r.GetContext())
	if err != nil {
		return nil, err
	}
	v, blob, err := f.seal(name, pt, r.GetContext())
	if err != nil {
		return nil, err
	}
	return &keywardv1.RewrapResponse{Ciphertext: blob, Key: name, Version: v, PreviousVersion: old}, nil
}

func (f *fakeDaemon) GenerateDataKey(_ context.Context, r *keywardv1.GenerateDataKeyRequest) (*keywardv1.GenerateDataKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := r.GetLength()
	if n == 0 {
		n = 32
	}
	if n > keys.MaxRandom {
		return nil, kwErr(keywardv1.ErrorReason_INVALID_REQUEST, "length over %d", keys.MaxRandom)
	}
	dk := make([]byte, n)
	rand.Read(dk)
	v, blob, err := f.seal(r.GetKey(), dk, r.GetContext())
	if err != nil {
		return nil, err
	}
	resp := &keywardv1.GenerateDataKeyResponse{Ciphertext: blob, Key: r.GetKey(), Version: v}
	if !r.GetWithoutPlaintext() {
		resp.Plaintext = dk
	}
	return resp, nil
}

var signTypes = []keys.Type{keys.ECDSAP256, keys.Ed25519}

func (f *fakeDaemon) Sign(_ context.Context, r *keywardv1.SignRequest) (*keywardv1.SignResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey(), signTypes...)
	if err != nil {
		return nil, err
	}
	v, fv, err := k.newest(r.GetKey())
	if err != nil {
		return nil, err
	}
	var sig []byte
	if fv.ed != nil {
		sig = ed25519.Sign(fv.ed, r.GetMessage())
	} else {
		d := sha256.Sum256(r.GetMessage())
		sig, err = ecdsa.SignASN1(rand.Reader, fv.ecdsa, d[:])
	}
	return &keywardv1.SignResponse{Signature: sig, Key: r.GetKey(), Version: v}, err
}

func (f *fakeDaemon) Verify(_ context.Context, r *keywardv1.VerifyRequest) (*keywardv1.VerifyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey(), signTypes...)
	if err != nil {
		return nil, err
	}
	vs, err := k.verifiers(r.GetKey(), r.GetVersion())
	if err != nil {
		return nil, err
	}
	for v, fv := range vs {
		d := sha256.Sum256(r.GetMessage())
		if fv.ed != nil && ed25519.Verify(fv.ed.Public().(ed25519.PublicKey), r.GetMessage(), r.GetSignature()) ||
			fv.ecdsa != nil && ecdsa.VerifyASN1(&fv.ecdsa.PublicKey, d[:], r.GetSignature()) {
			return &keywardv1.VerifyResponse{Valid: true, Version: v}, nil
		}
	}
	return &keywardv1.VerifyResponse{}, nil
}

func (f *fakeDaemon) Mac(_ context.Context, r *keywardv1.MacRequest) (*keywardv1.MacResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey(), keys.HMACSHA256)
	if err != nil {
		return nil, err
	}
	v, fv, err := k.newest(r.GetKey())
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, fv.secret)
	m.Write(r.GetMessage())
	return &keywardv1.MacResponse{Mac: m.Sum(nil), Key: r.GetKey(), Version: v}, nil
}

func (f *fakeDaemon) VerifyMac(_ context.Context, r *keywardv1.VerifyMacRequest) (*keywardv1.VerifyMacResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey(), keys.HMACSHA256)
	if err != nil {
		return nil, err
	}
	vs, err := k.verifiers(r.GetKey(), r.GetVersion())
	if err != nil {
		return nil, err
	}
	for v, fv := range vs {
		m := hmac.New(sha256.New, fv.secret)
		m.Write(r.GetMessage())
		if hmac.Equal(m.Sum(nil), r.GetMac()) {
			return &keywardv1.VerifyMacResponse{Valid: true, Version: v}, nil
		}
	}
	return &keywardv1.VerifyMacResponse{}, nil
}

func (f *fakeDaemon) GetPublicKey(_ context.Context, r *keywardv1.GetPublicKeyRequest) (*keywardv1.GetPublicKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey(), signTypes...)
	if err != nil {
		return nil, err
	}
	v := r.GetVersion()
	var fv *fakeVersion
	if v == 0 {
		v, fv, err = k.newest(r.GetKey())
	} else {
		fv, err = k.usable(r.GetKey(), v)
	}
	if err != nil {
		return nil, err
	}
	var pub any
	if fv.ed != nil {
		pub = fv.ed.Public()
	} else {
		pub = &fv.ecdsa.PublicKey
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return &keywardv1.GetPublicKeyResponse{Key: r.GetKey(), Version: v, KeyType: string(k.typ), PublicKeyDer: der,
		PublicKeyPem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil
}

func (f *fakeDaemon) CreateKey(_ context.Context, r *keywardv1.CreateKeyRequest) (*keywardv1.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := keys.ValidateName(r.GetKey()); err != nil {
		return nil, kwErr(keywardv1.ErrorReason_INVALID_KEY_NAME, "invalid key name")
	}
	t, err := keys.ParseType(r.GetKeyType())
	if err != nil {
		return nil, kwErr(keywardv1.ErrorReason_INVALID_REQUEST, "unknown key type")
	}
	if f.keys[r.GetKey()] != nil {
		return nil, kwErr(keywardv1.ErrorReason_KEY_EXISTS, "key %s already exists", r.GetKey())
	}
	v, err := newVersion(t)
	if err != nil {
		return nil, err
	}
	k := &fakeKey{typ: t, created: time.Now(), versions: []*fakeVersion{v}}
	f.keys[r.GetKey()] = k
	return k.info(r.GetKey()), nil
}

func (f *fakeDaemon) RotateKey(_ context.Context, r *keywardv1.RotateKeyRequest) (*keywardv1.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey())
	if err != nil {
		return nil, err
	}
	v, err := newVersion(k.typ)
	if err != nil {
		return nil, err
	}
	k.versions = append(k.versions, v)
	return k.info(r.GetKey()), nil
}

func (f *fakeDaemon) ListKeys(context.Context, *keywardv1.ListKeysRequest) (*keywardv1.ListKeysResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &keywardv1.ListKeysResponse{}
	for name, k := range f.keys {
		resp.Keys = append(resp.Keys, k.info(name))
	}
	return resp, nil
}

func (f *fakeDaemon) DescribeKey(_ context.Context, r *keywardv1.DescribeKeyRequest) (*keywardv1.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey())
	if err != nil {
		return nil, err
	}
	return k.info(r.GetKey()), nil
}

func (f *fakeDaemon) version(name string, v uint32) (*fakeKey, *fakeVersion, error) {
	k, err := f.lookup(name)
	if err != nil {
		return nil, nil, err
	}
	if v == 0 || int(v) > len(k.versions) {
		return nil, nil, kwErr(keywardv1.ErrorReason_KEY_NOT_FOUND, "key %s v%d not found", name, v)
	}
	return k, k.versions[v-1], nil
}

func (f *fakeDaemon) SetVersionState(_ context.Context, r *keywardv1.SetVersionStateRequest) (*keywardv1.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, fv, err := f.version(r.GetKey(), r.GetVersion())
	if err != nil {
		return nil, err
	}
	if fv.state == keywardv1.VersionState_DESTROYED {
		return nil, kwErr(keywardv1.ErrorReason_VERSION_DESTROYED, "key %s v%d is destroyed", r.GetKey(), r.GetVersion())
	}
	fv.state = r.GetState()
	return k.info(r.GetKey()), nil
}

func (f *fakeDaemon) DestroyVersion(_ context.Context, r *keywardv1.DestroyVersionRequest) (*keywardv1.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, fv, err := f.version(r.GetKey(), r.GetVersion())
	if err != nil {
		return nil, err
	}
	fv.state, fv.secret, fv.ecdsa, fv.ed = keywardv1.VersionState_DESTROYED, nil, nil, nil
	return k.info(r.GetKey()), nil
}

func (f *fakeDaemon) SetMinDecryptVersion(_ context.Context, r *keywardv1.SetMinDecryptVersionRequest) (*keywardv1.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.lookup(r.GetKey())
	if err != nil {
		return nil, err
	}
	if int(r.GetVersion()) > len(k.versions) {
		return nil, kwErr(keywardv1.ErrorReason_KEY_NOT_FOUND, "key %s v%d not found", r.GetKey(), r.GetVersion())
	}
	k.min = r.GetVersion()
	return k.info(r.GetKey()), nil
}

func (f *fakeDaemon) AdoptKey(context.Context, *keywardv1.AdoptKeyRequest) (*keywardv1.KeyInfo, error) {
	return nil, kwErr(keywardv1.ErrorReason_PERMISSION_DENIED, "not allowed")
}

func (f *fakeDaemon) Status(context.Context, *keywardv1.StatusRequest) (*keywardv1.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &keywardv1.StatusResponse{
		Version: "fake", Backend: "pkcs11", BackendHealthy: true, Keys: uint32(len(f.keys)),
		Started: timestamppb.New(f.started),
		You:     &keywardv1.Peer{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), Groups: []uint32{uint32(os.Getgid())}, Pid: 1, Unit: "fake.service"},
	}, nil
}
