package daemon

import (
	"bytes"
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// grpc-go answers a request that does not decode (not protobuf, another
// message type, invalid UTF-8 in a string field) with INTERNAL, which is
// outside the API's closed set of codes, and never shows it to the handler.
// This codec decodes as the default one does but, on failure, hands the
// handler an empty message carrying a marker in its unknown fields; the
// checkDecoded interceptor answers INVALID_REQUEST for it, and the audit log
// records the refusal like any other.

// undecodable is the marker: an unknown bytes field at the highest field
// number. A client that sends it itself only gets its request refused.
var undecodable = protowire.AppendBytes(protowire.AppendTag(nil, protowire.MaxValidNumber, protowire.BytesType), []byte("keyward: request did not decode"))

type lenientCodec struct{ inner encoding.CodecV2 }

func newCodec() encoding.CodecV2 { return lenientCodec{inner: encoding.GetCodecV2("proto")} }

func (c lenientCodec) Name() string { return c.inner.Name() }

// Marshal encodes a reply so that its secrets are zeroed once sent (see
// secrets.go).
func (c lenientCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return c.inner.Marshal(v)
	}
	return marshalReply(m)
}

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.inner.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	proto.Reset(m)
	m.ProtoReflect().SetUnknown(bytes.Clone(undecodable))
	return nil
}

// checkDecoded refuses requests the codec could not decode.
func checkDecoded(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok && bytes.Equal(m.ProtoReflect().GetUnknown(), undecodable) {
		return nil, statusFor(invalid("the request does not decode as this method's message (or has invalid UTF-8 in a string field)"))
	}
	return handler(ctx, req)
}

// unknownMethod answers a method or service the API does not have with
// INVALID_REQUEST instead of grpc-go's UNIMPLEMENTED.
func unknownMethod(any, grpc.ServerStream) error {
	return statusFor(invalid("no such method in keyward.v1.Keyward (nor, on the KMS socket, in v2.KeyManagementService)"))
}
