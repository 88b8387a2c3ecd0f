package daemon

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/keyward/keyward/api/keyward/v1"
)

func marker(s string) []byte { return bytes.Repeat([]byte(s), 8) }

func zeroed(b []byte) bool { return len(b) > 0 && bytes.Count(b, []byte{0}) == len(b) }

// TestClearSecrets: every secret field of every message that carries one,
// batch items included, is zeroed in place; the other bytes fields are not.
func TestClearSecrets(t *testing.T) {
	type field struct {
		b      []byte
		secret bool
	}
	f := func(secret bool, s string) field { return field{marker(s), secret} }
	tests := []struct {
		name   string
		fields []field
		msg    func(fs []field) proto.Message
	}{
		{"WrapRequest", []field{f(true, "pt")}, func(fs []field) proto.Message {
			return &pb.WrapRequest{Key: "k", Plaintext: fs[0].b}
		}},
		{"UnwrapResponse", []field{f(true, "pt")}, func(fs []field) proto.Message {
			return &pb.UnwrapResponse{Plaintext: fs[0].b, Key: "k"}
		}},
		{"UnwrapRequest", []field{f(false, "ct")}, func(fs []field) proto.Message {
			return &pb.UnwrapRequest{Ciphertext: fs[0].b}
		}},
		{"GenerateDataKeyResponse", []field{f(true, "dk"), f(false, "ct")}, func(fs []field) proto.Message {
			return &pb.GenerateDataKeyResponse{Plaintext: fs[0].b, Ciphertext: fs[1].b}
		}},
		{"SignRequest", []field{f(true, "msg")}, func(fs []field) proto.Message {
			return &pb.SignRequest{Key: "k", Message: fs[0].b}
		}},
		{"VerifyRequest", []field{f(true, "msg"), f(false, "sig")}, func(fs []field) proto.Message {
			return &pb.VerifyRequest{Message: fs[0].b, Signature: fs[1].b}
		}},
		{"MacRequest", []field{f(true, "api-secret")}, func(fs []field) proto.Message {
			return &pb.MacRequest{Message: fs[0].b}
		}},
		{"VerifyMacRequest", []field{f(true, "api-secret"), f(false, "mac")}, func(fs []field) proto.Message {
			return &pb.VerifyMacRequest{Message: fs[0].b, Mac: fs[1].b}
		}},
		{"BatchWrapRequest", []field{f(true, "a"), f(true, "b")}, func(fs []field) proto.Message {
			return &pb.BatchWrapRequest{Items: []*pb.WrapRequest{{Plaintext: fs[0].b}, {Plaintext: fs[1].b}}}
		}},
		{"BatchUnwrapResponse", []field{f(true, "a"), f(true, "b")}, func(fs []field) proto.Message {
			return &pb.BatchUnwrapResponse{Results: []*pb.BatchUnwrapResult{
				{Result: &pb.BatchUnwrapResult_Ok{Ok: &pb.UnwrapResponse{Plaintext: fs[0].b}}},
				{Result: &pb.BatchUnwrapResult_Error{Error: &pb.ItemError{}}},
				{Result: &pb.BatchUnwrapResult_Ok{Ok: &pb.UnwrapResponse{Plaintext: fs[1].b}}},
			}}
		}},
		{"BatchMacRequest", []field{f(true, "a")}, func(fs []field) proto.Message {
			return &pb.BatchMacRequest{Items: []*pb.MacRequest{{Message: fs[0].b}}}
		}},
		{"BatchVerifyMacRequest", []field{f(true, "a"), f(false, "mac")}, func(fs []field) proto.Message {
			return &pb.BatchVerifyMacRequest{Items: []*pb.VerifyMacRequest{{Message: fs[0].b, Mac: fs[1].b}}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearSecrets(tt.msg(tt.fields))
			for i, fd := range tt.fields {
				if zeroed(fd.b) != fd.secret {
					t.Errorf("field %d (secret %v): %q", i, fd.secret, fd.b)
				}
			}
		})
	}
	clearSecrets(nil) // no panic
}

// isSecret names the API's secret bytes fields: see secrets.go.
func isSecret(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.BytesKind && (fd.Name() == "plaintext" || fd.Name() == "message" || fd.Name() == "secret")
}

// fill sets every field of m that can hold bytes, directly or in nested
// messages (two list items, every oneof case in turn is not needed: each
// message is also filled on its own), to a non-zero marker, and returns
// the secret slices it set.
func fill(m protoreflect.Message, depth int) (secrets [][]byte) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.Kind() == protoreflect.BytesKind && !fd.IsList():
			b := marker(string(fd.Name()))
			m.Set(fd, protoreflect.ValueOfBytes(b))
			if isSecret(fd) {
				secrets = append(secrets, b)
			}
		case fd.Kind() == protoreflect.MessageKind && fd.IsList() && depth < 3:
			l := m.Mutable(fd).List()
			for range 2 {
				e := l.NewElement()
				secrets = append(secrets, fill(e.Message(), depth+1)...)
				l.Append(e)
			}
		case fd.Kind() == protoreflect.MessageKind && !fd.IsMap() && depth < 3:
			if oo := fd.ContainingOneof(); oo != nil && m.WhichOneof(oo) != nil {
				continue // one case of a oneof: the first
			}
			secrets = append(secrets, fill(m.Mutable(fd).Message(), depth+1)...)
		}
	}
	return secrets
}

// TestClearSecretsCoversAPI: for every request and reply of the API, each secret
// bytes field it carries (in batch items and oneof results too) is zeroed
// by clearSecrets: a new message or field with a secret cannot be missed.
func TestClearSecretsCoversAPI(t *testing.T) {
	fd, err := protoregistry.GlobalFiles.FindFileByPath(pb.File_keyward_v1_keyward_proto.Path())
	if err != nil {
		t.Fatal(err)
	}
	var rpcMsgs []protoreflect.MessageDescriptor // what a handler receives or returns
	methods := fd.Services().Get(0).Methods()
	for i := range methods.Len() {
		rpcMsgs = append(rpcMsgs, methods.Get(i).Input(), methods.Get(i).Output())
	}
	checked := 0
	for _, md := range rpcMsgs {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
		if err != nil {
			t.Fatal(err)
		}
		m := mt.New()
		secrets := fill(m, 0)
		if len(secrets) == 0 {
			continue
		}
		checked++
		clearSecrets(m.Interface())
		for _, b := range secrets {
			if !zeroed(b) {
				t.Errorf("%s: a secret field is left as %q", md.Name(), b)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d messages carry secrets; the walk is broken", checked)
	}
}

// TestMarshalReplyZeroes: the reply encodes as the default codec would;
// its plaintext is zeroed once encoded, and the encoded bytes once grpc-go
// frees them, also for a reply under grpc-go's pooling threshold.
func TestMarshalReplyZeroes(t *testing.T) {
	for _, n := range []int{16, 4 << 10} {
		pt := bytes.Repeat([]byte{0xA5}, n)
		want, err := proto.Marshal(&pb.UnwrapResponse{Plaintext: pt, Key: "k", Version: 3})
		if err != nil {
			t.Fatal(err)
		}
		resp := &pb.UnwrapResponse{Plaintext: pt, Key: "k", Version: 3}
		bs, err := newCodec().Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		if got := bs.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("n=%d: encoded differently from proto.Marshal", n)
		}
		if !zeroed(pt) || !zeroed(resp.Plaintext) {
			t.Errorf("n=%d: plaintext not zeroed after encoding", n)
		}
		if len(bs) != 1 {
			t.Fatalf("n=%d: %d buffers", n, len(bs))
		}
		wire := bs[0].ReadOnlyData()
		bs.Free()
		if !zeroed(wire) {
			t.Errorf("n=%d: encoded reply not zeroed after Free", n)
		}
	}
}

// BenchmarkMarshalReply: encoding a reply with zeroing (the daemon's codec)
// against grpc-go's proto codec, for one unwrap reply and a batch of 100,
// including the Free that zeroes the buffer.
func BenchmarkMarshalReply(b *testing.B) {
	one := func() proto.Message {
		return &pb.UnwrapResponse{Plaintext: make([]byte, 32), Key: "bench/key", Version: 1}
	}
	batch := func() proto.Message {
		r := &pb.BatchUnwrapResponse{}
		for range 100 {
			r.Results = append(r.Results, &pb.BatchUnwrapResult{Result: &pb.BatchUnwrapResult_Ok{Ok: one().(*pb.UnwrapResponse)}})
		}
		return r
	}
	for _, tt := range []struct {
		name string
		msg  func() proto.Message
	}{{"unwrap", one}, {"batch100", batch}} {
		for _, c := range []struct {
			name  string
			codec encoding.CodecV2
		}{{"grpc", encoding.GetCodecV2("proto")}, {"zeroing", newCodec()}} {
			b.Run(tt.name+"/"+c.name, func(b *testing.B) {
				m := tt.msg()
				for b.Loop() {
					bs, err := c.codec.Marshal(m)
					if err != nil {
						b.Fatal(err)
					}
					bs.Free()
				}
			})
		}
	}
}
