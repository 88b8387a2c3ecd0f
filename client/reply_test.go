package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
)

// hollow is a daemon that answers every data call with success and nothing
// in it: no blob, no signature, no key. No keywardd sends that, and the
// client must not hand it on as a result.
type hollow struct {
	keywardv1.UnimplementedKeywardServer
}

func (hollow) Wrap(context.Context, *keywardv1.WrapRequest) (*keywardv1.WrapResponse, error) {
	return &keywardv1.WrapResponse{}, nil
}
func (hollow) Rewrap(context.Context, *keywardv1.RewrapRequest) (*keywardv1.RewrapResponse, error) {
	return &keywardv1.RewrapResponse{Key: "k", Version: 2}, nil
}
func (hollow) Unwrap(context.Context, *keywardv1.UnwrapRequest) (*keywardv1.UnwrapResponse, error) {
	return &keywardv1.UnwrapResponse{Key: "k", Version: 1}, nil
}
func (hollow) GenerateDataKey(context.Context, *keywardv1.GenerateDataKeyRequest) (*keywardv1.GenerateDataKeyResponse, error) {
	return &keywardv1.GenerateDataKeyResponse{Ciphertext: []byte("blob")}, nil
}
func (hollow) Sign(context.Context, *keywardv1.SignRequest) (*keywardv1.SignResponse, error) {
	return &keywardv1.SignResponse{Key: "k", Version: 1}, nil
}
func (hollow) Mac(context.Context, *keywardv1.MacRequest) (*keywardv1.MacResponse, error) {
	return &keywardv1.MacResponse{}, nil
}
func (hollow) GetPublicKey(context.Context, *keywardv1.GetPublicKeyRequest) (*keywardv1.GetPublicKeyResponse, error) {
	return &keywardv1.GetPublicKeyResponse{Key: "k", Version: 1}, nil
}
func (hollow) BatchWrap(_ context.Context, r *keywardv1.BatchWrapRequest) (*keywardv1.BatchWrapResponse, error) {
	out := &keywardv1.BatchWrapResponse{}
	for range r.GetItems() {
		out.Results = append(out.Results, &keywardv1.BatchWrapResult{Result: &keywardv1.BatchWrapResult_Ok{Ok: &keywardv1.WrapResponse{}}})
	}
	return out, nil
}

// TestImpossibleReply: a reply that cannot be a real answer fails with
// ErrInternal, naming what is missing; an empty plaintext from Unwrap and
// a data key asked for without its plaintext are real answers.
func TestImpossibleReply(t *testing.T) {
	c := dial(t, serve(t, hollow{}))
	ctx := context.Background()
	tests := []struct {
		name    string
		call    func() error
		missing string // "" when the reply is a real answer
	}{
		{"wrap", func() error { _, err := c.Wrap(ctx, "k", []byte("secret"), nil); return err }, "ciphertext"},
		{"rewrap", func() error { _, err := c.Rewrap(ctx, []byte("blob"), nil); return err }, "ciphertext"},
		{"data key", func() error { _, err := c.GenerateDataKey(ctx, "k", nil, 0, false); return err }, "data key"},
		{"sign", func() error { _, err := c.Sign(ctx, "k", []byte("m")); return err }, "signature"},
		{"mac", func() error { _, err := c.Mac(ctx, "k", []byte("m")); return err }, "MAC"},
		{"public key", func() error { _, err := c.PublicKey(ctx, "k", 0); return err }, "public key"},
		{"batch wrap item", func() error {
			r, err := c.BatchWrap(ctx, []*keywardv1.WrapRequest{{Key: "k", Plaintext: []byte("x")}})
			if err != nil {
				return err
			}
			return r[0].Err
		}, "empty item"},
		{"unwrap of an empty plaintext", func() error { _, err := c.Unwrap(ctx, []byte("blob"), nil); return err }, ""},
		{"data key without plaintext", func() error { _, err := c.GenerateDataKey(ctx, "k", nil, 0, true); return err }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if tt.missing == "" {
				if err != nil {
					t.Fatalf("a real answer was refused: %v", err)
				}
				return
			}
			if !errors.Is(err, client.ErrInternal) || !strings.Contains(err.Error(), tt.missing) {
				t.Fatalf("got %v, want ErrInternal naming %q", err, tt.missing)
			}
		})
	}
}
