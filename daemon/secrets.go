package daemon

import (
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	kmsapi "k8s.io/kms/apis/v2"

	pb "github.com/keyward/keyward/api/keyward/v1"
)

// Callers' secrets pass through the daemon in API messages: plaintexts and
// data keys (fields named "plaintext"), the messages of sign, verify, mac
// and verify-mac ("message"; for MACs, API credentials) and stored
// credentials ("secret"). The daemon zeroes
// its copies once they are done with: a request's after its handler
// returns (no reply refers to a request's bytes), a reply's right after it
// is encoded, and the encoded reply once gRPC has written it. What it
// cannot reach stays as Go and grpc-go leave it: the receive buffers the
// request was decoded from and the HTTP/2 writer's buffer.

// clearSecrets zeroes, in place, the secret bytes fields of m, each item's
// of a batch included. A type switch, not a reflective walk: this runs on
// every call (TestClearSecretsCoversAPI keeps it complete).
func clearSecrets(m any) {
	switch m := m.(type) {
	case *pb.WrapRequest:
		clear(m.GetPlaintext())
	case *pb.BatchWrapRequest:
		for _, it := range m.GetItems() {
			clear(it.GetPlaintext())
		}
	case *pb.UnwrapResponse:
		clear(m.GetPlaintext())
	case *pb.BatchUnwrapResponse:
		for _, r := range m.GetResults() {
			clear(r.GetOk().GetPlaintext())
		}
	case *pb.GenerateDataKeyResponse:
		clear(m.GetPlaintext())
	case *pb.SignRequest:
		clear(m.GetMessage())
	case *pb.VerifyRequest:
		clear(m.GetMessage())
	case *pb.MacRequest:
		clear(m.GetMessage())
	case *pb.BatchMacRequest:
		for _, it := range m.GetItems() {
			clear(it.GetMessage())
		}
	case *pb.VerifyMacRequest:
		clear(m.GetMessage())
	case *pb.BatchVerifyMacRequest:
		for _, it := range m.GetItems() {
			clear(it.GetMessage())
		}
	case *pb.PutCredentialRequest:
		clear(m.GetSecret())
	case *kmsapi.EncryptRequest:
		clear(m.GetPlaintext())
	case *kmsapi.DecryptResponse:
		clear(m.GetPlaintext())
	}
}

// zeroingPool hands the codec's reply buffers to grpc-go, which gives each
// back (Put) once the reply has been written: it is zeroed then. grpc-go
// only gives back buffers of more than its pooling threshold (1 KiB), so
// smaller replies get one of minReplyBuffer bytes, reused once zeroed.
type zeroingPool struct{}

const minReplyBuffer = 1<<10 + 1

var smallReplies = sync.Pool{New: func() any { b := make([]byte, 0, minReplyBuffer); return &b }}

func (zeroingPool) Get(n int) *[]byte {
	if n <= minReplyBuffer {
		bp := smallReplies.Get().(*[]byte)
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n)
	return &b
}

func (zeroingPool) Put(bp *[]byte) {
	clear((*bp)[:cap(*bp)])
	if cap(*bp) == minReplyBuffer {
		*bp = (*bp)[:0]
		smallReplies.Put(bp)
	}
}

// marshalReply encodes a reply into a zeroingPool buffer and zeroes the
// reply's own secret fields.
func marshalReply(m proto.Message) (mem.BufferSlice, error) {
	size := proto.Size(m)
	bp := zeroingPool{}.Get(size)
	out, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend((*bp)[:0], m)
	clearSecrets(m)
	if err != nil {
		zeroingPool{}.Put(bp)
		return nil, err
	}
	*bp = out
	return mem.BufferSlice{mem.NewBuffer(bp, zeroingPool{})}, nil
}
