package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/client"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
	"github.com/keyward/keyward/socket"
)

// serviceMethods is every RPC of keyward.v1.Keyward, read from the protobuf
// descriptor, checked against the gRPC service descriptor the server
// registers.
func serviceMethods(t *testing.T) []string {
	t.Helper()
	sd := pb.File_keyward_v1_keyward_proto.Services().ByName("Keyward")
	if sd == nil {
		t.Fatal("keyward.v1.Keyward not in the file descriptor")
	}
	var names []string
	for i := range sd.Methods().Len() {
		names = append(names, string(sd.Methods().Get(i).Name()))
	}
	var registered []string
	for _, md := range pb.Keyward_ServiceDesc.Methods {
		registered = append(registered, md.MethodName)
	}
	for _, sd := range pb.Keyward_ServiceDesc.Streams {
		registered = append(registered, sd.StreamName)
	}
	slices.Sort(names)
	slices.Sort(registered)
	if !slices.Equal(names, registered) {
		t.Fatalf("the file descriptor names %v, the registered service %v", names, registered)
	}
	return names
}

// TestMethodTable fails on an RPC missing from the method table (its calls
// would be recorded as "unknown" and its idempotency unknown to clients),
// on a table entry the service lacks, and on an entry that contradicts
// itself or the policy's operations.
func TestMethodTable(t *testing.T) {
	rpcs := serviceMethods(t)
	for _, name := range rpcs {
		m, ok := methods[name]
		if !ok {
			t.Errorf("RPC %s is not in the method table (daemon/methods.go)", name)
			continue
		}
		if m.kind == 0 || m.audit == "" || m.audit == "unknown" || m.log == "" {
			t.Errorf("%s: incomplete entry %+v", name, *m)
		}
		if m.op != "" && m.audit != string(m.op) {
			t.Errorf("%s: audit name %q, want its operation %q", name, m.audit, m.op)
		}
		if m.op == "" && m.kind != kindStatus && m.kind != kindBreakglass && name != "SetVersionState" {
			t.Errorf("%s: no policy operation", name)
		}
		if m.kind == kindAdmin && m.idempotent && m.op != policy.OpKeyRead {
			t.Errorf("%s: a key change marked idempotent", name)
		}
		if m.batch && m.kind != kindData {
			t.Errorf("%s: a batch of %v", name, m.kind)
		}
	}
	for name := range methods {
		if !slices.Contains(rpcs, name) {
			t.Errorf("method table names %s, which keyward.v1.Keyward lacks", name)
		}
	}
	covered := map[policy.Operation]bool{}
	for _, m := range methods {
		covered[m.op] = true
	}
	for _, m := range kmsMethods {
		covered[m.op] = true
	}
	for _, so := range stateOps {
		covered[so.op] = true
	}
	covered[policy.OpCredential] = true // served on the credential socket, not an RPC
	for _, op := range slices.Concat(policy.DataOperations, policy.AdminOperations) {
		if !covered[op] {
			t.Errorf("policy operation %s is reached by no RPC", op)
		}
	}
}

// TestBatchItemsAreTheirSingleOps: a batch authorises and records each item
// as the single call of the same operation.
func TestBatchItemsAreTheirSingleOps(t *testing.T) {
	for _, b := range []struct {
		m, item *method
	}{
		{batchWrap.m, batchWrap.item.m}, {batchUnwrap.m, batchUnwrap.item.m},
		{batchMAC.m, batchMAC.item.m}, {batchVerifyMAC.m, batchVerifyMAC.item.m},
	} {
		if !b.m.batch || b.item.batch || b.m.op != b.item.op || b.m.audit != b.item.audit {
			t.Errorf("batch %+v of items %+v", *b.m, *b.item)
		}
	}
}

// listOnly answers ListKeys with no keys; nothing else is reached by the
// empty requests TestEveryCallIsRecorded sends.
type listOnly struct{ keys.Backend }

func (listOnly) ListKeys(context.Context) ([]keys.KeyInfo, error) { return nil, nil }

// TestEveryCallIsRecorded calls every RPC of the service descriptor, through
// its registered handler, with an empty request: each call but Status
// leaves audit records, all named by the table's audit name.
func TestEveryCallIsRecorded(t *testing.T) {
	pol, err := policy.Compile(nil, policy.SystemResolver())
	if err != nil {
		t.Fatal(err)
	}
	svc := NewService(listOnly{}, "test", "test", pol, config.Defaults().Limits, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: socket.AuthInfo{
		Peer:           socket.Peer{UID: 1000, GID: 1000, PID: 4242},
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
	}})
	serviceMethods(t)
	for _, md := range pb.Keyward_ServiceDesc.Methods {
		m := methods[md.MethodName]
		if m == nil {
			t.Errorf("%s: not in the method table", md.MethodName)
			continue
		}
		if m.kind == kindStatus {
			continue
		}
		cl := &call{log: nil, id: "test", start: time.Now()}
		_, err := md.Handler(svc, context.WithValue(ctx, callKey{}, cl), func(any) error { return nil }, nil)
		ops := []string{methodOp(keywardService + md.MethodName)} // what the interceptor records for a call that left none
		if len(cl.recs) > 0 {
			ops = nil
			for _, r := range cl.recs {
				ops = append(ops, r.Op)
			}
		}
		for _, op := range ops {
			if op != m.audit {
				t.Errorf("%s (err %v): recorded as %q, want %q", md.MethodName, err, op, m.audit)
			}
		}
	}
}

// TestClientRetriesAgreeWithTable: the client retries on UNAVAILABLE
// exactly the RPCs the table calls idempotent, and has a call for each.
func TestClientRetriesAgreeWithTable(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{}
	sock := filepath.Join(t.TempDir(), "k.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(func(_ context.Context, _ any, info *grpc.UnaryServerInfo, _ grpc.UnaryHandler) (any, error) {
		mu.Lock()
		tries[filepath.Base(info.FullMethod)]++
		mu.Unlock()
		return nil, statusFor(errors.New("device away"))
	}))
	pb.RegisterKeywardServer(g, struct{ pb.UnimplementedKeywardServer }{})
	go g.Serve(l)
	t.Cleanup(g.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, sock, client.WithRetry(2, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range serviceMethods(t) {
		callRPC, ok := clientCalls[name]
		if !ok {
			t.Errorf("%s: no client call in clientCalls", name)
			continue
		}
		if err := callRPC(ctx, c); !errors.Is(err, client.ErrUnavailable) {
			t.Errorf("%s: %v, want ErrUnavailable", name, err)
		}
		want := 1
		if methods[name] != nil && methods[name].idempotent {
			want = 2
		}
		mu.Lock()
		got := tries[name]
		mu.Unlock()
		if got != want {
			t.Errorf("%s: the client tried %d times, want %d (idempotent: %v)", name, got, want, want == 2)
		}
	}
}

// clientCalls makes each RPC through the client package.
var clientCalls = map[string]func(context.Context, *client.Client) error{
	"Wrap": func(ctx context.Context, c *client.Client) error { _, err := c.Wrap(ctx, "a/b", nil, nil); return err },
	"Unwrap": func(ctx context.Context, c *client.Client) error {
		_, err := c.Unwrap(ctx, []byte("x"), nil)
		return err
	},
	"Rewrap": func(ctx context.Context, c *client.Client) error {
		_, err := c.Rewrap(ctx, []byte("x"), nil)
		return err
	},
	"GenerateDataKey": func(ctx context.Context, c *client.Client) error {
		_, err := c.GenerateDataKey(ctx, "a/b", nil, 0, false)
		return err
	},
	"Sign": func(ctx context.Context, c *client.Client) error { _, err := c.Sign(ctx, "a/b", nil); return err },
	"Verify": func(ctx context.Context, c *client.Client) error {
		_, _, err := c.Verify(ctx, "a/b", 0, nil, nil)
		return err
	},
	"Mac": func(ctx context.Context, c *client.Client) error { _, err := c.Mac(ctx, "a/b", nil); return err },
	"VerifyMac": func(ctx context.Context, c *client.Client) error {
		_, _, err := c.VerifyMac(ctx, "a/b", 0, nil, nil)
		return err
	},
	"GetPublicKey": func(ctx context.Context, c *client.Client) error { _, err := c.PublicKey(ctx, "a/b", 0); return err },
	"BatchWrap": func(ctx context.Context, c *client.Client) error {
		_, err := c.BatchWrap(ctx, []*pb.WrapRequest{{Key: "a/b"}})
		return err
	},
	"BatchUnwrap": func(ctx context.Context, c *client.Client) error {
		_, err := c.BatchUnwrap(ctx, []*pb.UnwrapRequest{{Ciphertext: []byte("x")}})
		return err
	},
	"BatchMac": func(ctx context.Context, c *client.Client) error {
		_, err := c.BatchMac(ctx, []*pb.MacRequest{{Key: "a/b"}})
		return err
	},
	"BatchVerifyMac": func(ctx context.Context, c *client.Client) error {
		_, err := c.BatchVerifyMac(ctx, []*pb.VerifyMacRequest{{Key: "a/b"}})
		return err
	},
	"CreateKey": func(ctx context.Context, c *client.Client) error {
		_, err := c.CreateKey(ctx, "a/b", "aes-256-gcm")
		return err
	},
	"RotateKey":   func(ctx context.Context, c *client.Client) error { _, err := c.RotateKey(ctx, "a/b"); return err },
	"ListKeys":    func(ctx context.Context, c *client.Client) error { _, err := c.ListKeys(ctx); return err },
	"DescribeKey": func(ctx context.Context, c *client.Client) error { _, err := c.DescribeKey(ctx, "a/b"); return err },
	"SetVersionState": func(ctx context.Context, c *client.Client) error {
		_, err := c.SetVersionState(ctx, "a/b", 1, false)
		return err
	},
	"DestroyVersion": func(ctx context.Context, c *client.Client) error {
		_, err := c.DestroyVersion(ctx, "a/b", 1)
		return err
	},
	"SetMinDecryptVersion": func(ctx context.Context, c *client.Client) error {
		_, err := c.SetMinDecryptVersion(ctx, "a/b", 1)
		return err
	},
	"AdoptKey": func(ctx context.Context, c *client.Client) error {
		_, err := c.AdoptKey(ctx, "a/b", "aes-256-gcm", "pkcs11:object=x")
		return err
	},
	"SetRotationPolicy": func(ctx context.Context, c *client.Client) error {
		_, err := c.SetRotationPolicy(ctx, "a/b", 90*24*time.Hour)
		return err
	},
	"SetDisableAfter": func(ctx context.Context, c *client.Client) error {
		_, err := c.SetDisableAfter(ctx, "a/b", 30*24*time.Hour)
		return err
	},
	"Status": func(ctx context.Context, c *client.Client) error { _, err := c.Status(ctx); return err },
	"PutCredential": func(ctx context.Context, c *client.Client) error {
		_, err := c.PutCredential(ctx, "a.service", "x", "a/b", []byte("s"), false)
		return err
	},
	"ListCredentials": func(ctx context.Context, c *client.Client) error { _, err := c.ListCredentials(ctx, ""); return err },
	"RemoveCredential": func(ctx context.Context, c *client.Client) error {
		_, err := c.RemoveCredential(ctx, "a.service", "x")
		return err
	},
	"RewrapCredentials": func(ctx context.Context, c *client.Client) error {
		_, err := c.RewrapCredentials(ctx, "", "")
		return err
	},
	"BreakglassRequest": func(ctx context.Context, c *client.Client) error {
		_, err := c.BreakglassRequest(ctx, client.BreakglassRequest{Policy: "p", Key: "a/b", Operation: "unwrap"})
		return err
	},
	"BreakglassApprove": func(ctx context.Context, c *client.Client) error { _, err := c.BreakglassApprove(ctx, "x"); return err },
	"BreakglassDeny":    func(ctx context.Context, c *client.Client) error { _, err := c.BreakglassDeny(ctx, "x"); return err },
	"BreakglassRevoke":  func(ctx context.Context, c *client.Client) error { _, err := c.BreakglassRevoke(ctx, "x"); return err },
	"BreakglassList":    func(ctx context.Context, c *client.Client) error { _, err := c.BreakglassList(ctx); return err },
}
