package daemon

import (
	"fmt"
	"path"
	"strings"

	pb "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/keys"
	"github.com/keyward/keyward/policy"
)

// methodKind says how an RPC is authorised and audited.
type methodKind uint8

const (
	// kindData uses a key: authorised per key (per item in a batch), one
	// audit record per operation, through one wrapper (serve, runOp).
	kindData methodKind = iota + 1
	// kindAdmin reads or changes a key's lifecycle: authorised per key, a
	// change gets a durable intent record (STARTED) before it reaches the
	// device (Service.admin).
	kindAdmin
	// kindStatus answers every caller who may connect, unaudited.
	kindStatus
	// kindBreakglass asks for, approves, denies, revokes or lists
	// break-glass grants: authorised by the [[breakglass]] tables, not the
	// rules; a change is recorded as started before it is stored
	// (breakglass_rpc.go).
	kindBreakglass
)

// method is one RPC of keyward.v1.Keyward: everything the daemon, its audit
// trail and its clients need to know about it apart from its handler.
type method struct {
	// op is what the policy authorises; SetVersionState has none of its
	// own (stateOps: key.enable or key.disable by the state asked for).
	op policy.Operation
	// audit is the op of the call's record when it is refused before any
	// operation ran (a malformed request, a refusal summary); a call that
	// ran records op (each item, for a batch).
	audit string
	// log names the call in the daemon log's lines about its failures.
	log        string
	kind       methodKind
	batch      bool // items are checked, authorised, run and recorded one by one
	idempotent bool // a client may retry it on UNAVAILABLE: a retry changes nothing
}

// methods is the RPC surface, by gRPC method name (pb.Keyward_ServiceDesc).
// A method missing here is refused by nothing and recorded as "unknown":
// TestMethodTable fails on one.
var methods = map[string]*method{
	"Wrap":            {op: policy.OpWrap, audit: "wrap", log: "wrap", kind: kindData, idempotent: true},
	"Unwrap":          {op: policy.OpUnwrap, audit: "unwrap", log: "unwrap", kind: kindData, idempotent: true},
	"Rewrap":          {op: policy.OpRewrap, audit: "rewrap", log: "rewrap", kind: kindData, idempotent: true},
	"GenerateDataKey": {op: policy.OpDataKey, audit: "datakey", log: "datakey", kind: kindData, idempotent: true},
	"Sign":            {op: policy.OpSign, audit: "sign", log: "sign", kind: kindData, idempotent: true},
	"Verify":          {op: policy.OpVerify, audit: "verify", log: "verify", kind: kindData, idempotent: true},
	"Mac":             {op: policy.OpMAC, audit: "mac", log: "mac", kind: kindData, idempotent: true},
	"VerifyMac":       {op: policy.OpVerifyMAC, audit: "verify-mac", log: "verify-mac", kind: kindData, idempotent: true},
	"GetPublicKey":    {op: policy.OpPublicKey, audit: "public-key", log: "public-key", kind: kindData, idempotent: true},

	"BatchWrap":      {op: policy.OpWrap, audit: "wrap", log: "batch-wrap", kind: kindData, batch: true, idempotent: true},
	"BatchUnwrap":    {op: policy.OpUnwrap, audit: "unwrap", log: "batch-unwrap", kind: kindData, batch: true, idempotent: true},
	"BatchMac":       {op: policy.OpMAC, audit: "mac", log: "batch-mac", kind: kindData, batch: true, idempotent: true},
	"BatchVerifyMac": {op: policy.OpVerifyMAC, audit: "verify-mac", log: "batch-verify-mac", kind: kindData, batch: true, idempotent: true},

	"CreateKey":            {op: policy.OpKeyCreate, audit: "key.create", log: "key.create", kind: kindAdmin},
	"RotateKey":            {op: policy.OpKeyRotate, audit: "key.rotate", log: "key.rotate", kind: kindAdmin},
	"ListKeys":             {op: policy.OpKeyRead, audit: "key.read", log: "list", kind: kindAdmin, idempotent: true},
	"DescribeKey":          {op: policy.OpKeyRead, audit: "key.read", log: "key.read", kind: kindAdmin, idempotent: true},
	"SetVersionState":      {audit: "key.set-state", log: "key.set-state", kind: kindAdmin},
	"DestroyVersion":       {op: policy.OpKeyDestroy, audit: "key.destroy", log: "key.destroy", kind: kindAdmin},
	"SetMinDecryptVersion": {op: policy.OpKeySetMin, audit: "key.set-min-version", log: "key.set-min-version", kind: kindAdmin},
	"AdoptKey":             {op: policy.OpKeyAdopt, audit: "key.adopt", log: "key.adopt", kind: kindAdmin},
	"SetRotationPolicy":    {op: policy.OpKeySetRotation, audit: "key.set-rotation", log: "key.set-rotation", kind: kindAdmin},
	"SetDisableAfter":      {op: policy.OpKeySetDisableAfter, audit: "key.set-disable-after", log: "key.set-disable-after", kind: kindAdmin},

	"Status": {audit: "status", log: "status", kind: kindStatus, idempotent: true},

	"PutCredential":     {op: policy.OpCredentialPut, audit: "credential.put", log: "credential.put", kind: kindAdmin},
	"ListCredentials":   {op: policy.OpCredentialPut, audit: "credential.put", log: "credential.list", kind: kindAdmin},
	"RemoveCredential":  {op: policy.OpCredentialPut, audit: "credential.put", log: "credential.rm", kind: kindAdmin},
	"RewrapCredentials": {op: policy.OpCredentialPut, audit: "credential.put", log: "credential.rewrap", kind: kindAdmin},

	"BreakglassRequest": {audit: auditBGRequest, log: auditBGRequest, kind: kindBreakglass},
	"BreakglassApprove": {audit: auditBGApprove, log: auditBGApprove, kind: kindBreakglass},
	"BreakglassDeny":    {audit: auditBGDeny, log: auditBGDeny, kind: kindBreakglass},
	"BreakglassRevoke":  {audit: auditBGRevoke, log: auditBGRevoke, kind: kindBreakglass},
	"BreakglassList":    {audit: auditBGList, log: auditBGList, kind: kindBreakglass, idempotent: true},
}

// kmsMethods is the Kubernetes KMS v2 service (k8s.io/kms/apis/v2,
// KeyManagementService), served on kms_socket by kmsServer (kms.go).
// Its Status is answered like keyward's: to every caller who may connect
// to that socket, unaudited.
var kmsMethods = map[string]*method{
	"Encrypt": {op: policy.OpKMSEncrypt, audit: "kms.encrypt", log: "kms.encrypt", kind: kindData, idempotent: true},
	"Decrypt": {op: policy.OpKMSDecrypt, audit: "kms.decrypt", log: "kms.decrypt", kind: kindData, idempotent: true},
	"Status":  {audit: "kms.status", log: "kms.status", kind: kindStatus, idempotent: true},
}

// stateOps are SetVersionState's operations, by the state asked for; any
// other state is an invalid request (DestroyVersion destroys).
var stateOps = map[pb.VersionState]struct {
	op    policy.Operation
	state keys.State
}{
	pb.VersionState_ENABLED:  {policy.OpKeyEnable, keys.Enabled},
	pb.VersionState_DISABLED: {policy.OpKeyDisable, keys.Disabled},
}

// methodOf returns the table's entry for an RPC the service implements; a
// handler naming a method the table lacks is a programming error, caught
// when the package is initialised.
func methodOf(name string) *method {
	m, ok := methods[name]
	if !ok {
		panic(fmt.Sprintf("daemon: RPC %s is not in the method table", name))
	}
	return m
}

// keywardService and kmsService are the gRPC services keywardd serves, as
// they start a full method name ("/keyward.v1.Keyward/Wrap").
const (
	keywardService = "/keyward.v1.Keyward/"
	kmsService     = "/v2.KeyManagementService/"
)

// methodFor returns the table's entry for a full gRPC method name, nil for
// a method neither service has: each service has its own table (both have a
// Status).
func methodFor(full string) *method {
	if name, ok := strings.CutPrefix(full, keywardService); ok {
		return methods[name]
	}
	if name, ok := strings.CutPrefix(full, kmsService); ok {
		return kmsMethods[name]
	}
	return nil
}

// isStatus reports whether the full method name is a Status, which every
// caller who may connect may ask, whatever the limits.
func isStatus(full string) bool {
	m := methodFor(full)
	return m != nil && m.kind == kindStatus
}

// methodOp names an RPC (a full method name) as an operation, for calls
// refused before they reached one.
func methodOp(full string) string {
	if m := methodFor(full); m != nil {
		return m.audit
	}
	return "unknown" // the name is the caller's: never written as is
}

// metricName is an RPC's label in the request metrics: the method's name,
// prefixed with "kms." for the KMS service.
func metricName(full string) string {
	if name, ok := strings.CutPrefix(full, kmsService); ok && kmsMethods[name] != nil {
		return "kms." + name
	}
	return path.Base(full)
}
