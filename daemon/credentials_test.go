package daemon_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	kwclient "github.com/keyward/keyward/client"
	"github.com/keyward/keyward/config"
	"github.com/keyward/keyward/internal/testutil"
	"github.com/keyward/keyward/policy"
)

// credChildEnv makes the test binary a credential requester: it binds
// $KW_CRED_ADDR (abstract, "" for none), connects to $KW_CRED_SOCK, reads
// to EOF and prints what it got in hex, "EMPTY", or "REFUSED" for
// keywardd's refusal (more zero bytes than systemd accepts).
const credChildEnv = "KEYWARD_CRED_CHILD"

func init() {
	if os.Getenv(credChildEnv) != "" {
		os.Exit(credChild())
	}
}

func credChild() int {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Println("socket", err)
		return 1
	}
	if a := os.Getenv("KW_CRED_ADDR"); a != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + a}); err != nil {
			fmt.Println("bind", err)
			return 1
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: os.Getenv("KW_CRED_SOCK")}); err != nil {
		fmt.Println("connect", err)
		return 1
	}
	f := os.NewFile(uintptr(fd), "cred")
	b, _ := io.ReadAll(f)
	if len(b) == 0 {
		fmt.Println("EMPTY")
		return 0
	}
	if len(b) > 1<<20 && bytes.Count(b, []byte{0}) == len(b) {
		fmt.Println("REFUSED") // more than systemd takes: the unit fails to start
		return 0
	}
	fmt.Println(hex.EncodeToString(b))
	return 0
}

// testCgroup makes a cgroup named like a service unit, under a slice of
// its own in the cgroup2 hierarchy, and returns its directory (removed at
// the end). A process placed in it is, to keywardd, in that unit.
func testCgroup(t *testing.T, unit string) string {
	t.Helper()
	var root string
	for _, r := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(r, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			root = r
			break
		}
	}
	if root == "" {
		t.Skip("no cgroup2 hierarchy: cannot place a process in a unit's cgroup")
	}
	slice := filepath.Join(root, "kwtest-"+randHex(6)+".slice")
	dir := filepath.Join(slice, unit)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot create a test cgroup (%v): run as root", err)
	}
	t.Cleanup(func() { os.Remove(dir); os.Remove(slice) })
	return dir
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// askCredential runs a requester as uid in cgroup (""; the test's own)
// with address addr and returns what it printed.
func askCredential(t *testing.T, sock, cgroup, addr string, uid uint32) string {
	t.Helper()
	cmd := exec.Command(childBinary(t))
	cmd.Env = append(os.Environ(), credChildEnv+"=1", "KW_CRED_SOCK="+sock, "KW_CRED_ADDR="+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if cgroup != "" {
		cg, err := os.Open(cgroup)
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("requester: %v: %s", err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// TestCredentialSocket: a root process in a unit's cgroup that binds
// systemd's address gets the unit's credential; every other asker gets
// nothing, and each request leaves a record naming its unit.
func TestCredentialSocket(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("credential tests need root: the requester must be uid 0 in a unit's cgroup")
	}
	sfx := randHex(4)
	pay, other, stranger := "pay-"+sfx+".service", "other-"+sfx+".service", "app-"+sfx+"@blue.service"
	var credSock, credDir string
	r := start(t, []policy.Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"key.create", "credential.put"}},
		{Name: "payments", Units: []string{pay, stranger}, Keys: []string{"creds" + sfx + "/*"}, Operations: []string{"credential"}},
	}, func(c *config.Config) {
		credSock = filepath.Join(filepath.Dir(c.Socket), "credentials.sock")
		credDir = filepath.Join(filepath.Dir(filepath.Dir(c.Socket)), "credstore")
		c.CredentialsSocket, c.CredentialsDir = credSock, credDir
	})
	// Wider than keywardd makes it, so that its own uid check is what refuses.
	if err := os.Chmod(credSock, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(credSock), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kwclient.Dial(ctx, r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, k := range []string{"creds" + sfx + "/db", "other" + sfx + "/db"} {
		if _, err := c.CreateKey(ctx, k, "aes-256-gcm"); err != nil {
			t.Fatal(err)
		}
	}
	secret := []byte("s3cret-" + sfx)
	put := func(unit, id, key string) {
		t.Helper()
		if _, err := c.PutCredential(ctx, unit, id, key, append([]byte(nil), secret...), false); err != nil {
			t.Fatalf("put %s/%s: %v", unit, id, err)
		}
	}
	put(pay, "db-password", "creds"+sfx+"/db")
	put(other, "db-password", "creds"+sfx+"/db")
	put("app-"+sfx+"@.service", "tmpl", "creds"+sfx+"/db")
	put(pay, "wrong-key", "other"+sfx+"/db")
	// A blob copied into another unit's directory.
	blob, err := os.ReadFile(filepath.Join(credDir, pay, "db-password"))
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(credDir, stranger), 0o700)
	if err := os.WriteFile(filepath.Join(credDir, stranger, "copied"), blob, 0o600); err != nil {
		t.Fatal(err)
	}

	payCG, otherCG, strangerCG := testCgroup(t, pay), testCgroup(t, other), testCgroup(t, stranger)
	want := hex.EncodeToString(secret)
	addr := func(unit, id string) string { return randHex(7) + "/unit/" + unit + "/" + id }
	tests := []struct {
		name, cgroup, addr string
		uid                uint32
		want, result       string
	}{
		{"the unit's own credential", payCG, addr(pay, "db-password"), 0, want, "OK"},
		{"an instance falls back to its template", strangerCG, addr(stranger, "tmpl"), 0, want, "OK"},
		{"a non-root process in the unit", payCG, addr(pay, "db-password"), 12003, "REFUSED", "PERMISSION_DENIED"},
		{"root outside the unit's cgroup", "", addr(pay, "db-password"), 0, "REFUSED", "PERMISSION_DENIED"},
		{"root in another unit naming this one", otherCG, addr(pay, "db-password"), 0, "REFUSED", "PERMISSION_DENIED"},
		{"an address not in systemd's form", payCG, "junk/" + pay + "/db-password", 0, "REFUSED", "PERMISSION_DENIED"},
		{"no address at all", payCG, "", 0, "REFUSED", "PERMISSION_DENIED"},
		{"a unit no rule names", otherCG, addr(other, "db-password"), 0, "REFUSED", "PERMISSION_DENIED"},
		{"a key the rule does not name", payCG, addr(pay, "wrong-key"), 0, "REFUSED", "PERMISSION_DENIED"},
		{"a blob copied into another unit's directory", strangerCG, addr(stranger, "copied"), 0, "REFUSED", "DECRYPTION_FAILED"},
		{"no such credential", payCG, addr(pay, "nope"), 0, "REFUSED", "NOT_FOUND"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := askCredential(t, credSock, tt.cgroup, tt.addr, tt.uid); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	creds := credRecords(t, filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log"))
	if len(creds) != len(tests) {
		t.Fatalf("%d credential records, want %d: %+v", len(creds), len(tests), creds)
	}
	for i, tt := range tests {
		if creds[i].Result != tt.result {
			t.Errorf("%s: record %+v, want result %s", tt.name, creds[i], tt.result)
		}
		wantUnit := pay
		switch tt.cgroup {
		case "":
			wantUnit = ""
		case otherCG:
			wantUnit = other
		case strangerCG:
			wantUnit = stranger
		}
		if creds[i].Peer.Unit != wantUnit {
			t.Errorf("%s: record names unit %q, want %q", tt.name, creds[i].Peer.Unit, wantUnit)
		}
		if bytes.Contains([]byte(creds[i].Reason), secret) {
			t.Errorf("%s: the secret is in the audit record", tt.name)
		}
	}
	if creds[0].Key != "creds"+sfx+"/db" || creds[0].Version != 1 || !strings.Contains(creds[0].Reason, "credential db-password") {
		t.Errorf("served record %+v: want key creds/db v1 naming the credential", creds[0])
	}
}

type credLine struct {
	Peer struct {
		UID  uint32 `json:"uid"`
		Unit string `json:"unit"`
	} `json:"peer"`
	Op      string `json:"op"`
	Key     string `json:"key"`
	Version uint32 `json:"version"`
	Result  string `json:"result"`
	Reason  string `json:"reason"`
}

// credRecords returns the audit log's credential records, in order.
func credRecords(t *testing.T, path string) []credLine {
	t.Helper()
	var out []credLine
	for _, a := range readAuditAs[credLine](t, path) {
		if a.Op == "credential" {
			out = append(out, a)
		}
	}
	return out
}

// credAdmin starts a daemon with a credential store under rules and
// returns it, the store's directory, a client of root's (closed at the
// end) and its context, with an aes-256-gcm key of each name made.
func credAdmin(t *testing.T, rules []policy.Rule, keyNames ...string) (*running, string, *kwclient.Client, context.Context) {
	t.Helper()
	var credDir string
	r := start(t, rules, func(c *config.Config) {
		credDir = filepath.Join(filepath.Dir(filepath.Dir(c.Socket)), "credstore")
		c.CredentialsDir = credDir
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := kwclient.Dial(ctx, r.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, k := range keyNames {
		if _, err := c.CreateKey(ctx, k, "aes-256-gcm"); err != nil {
			t.Fatal(err)
		}
	}
	return r, credDir, c, ctx
}

// TestCredentialAdmin: put, list, rewrap after a rotation (only what is
// behind the newest version) and rm; refusals with their reasons; the
// store's files are private and never hold the plaintext.
func TestCredentialAdmin(t *testing.T) {
	sfx := randHex(4)
	kc, ko := "creds"+sfx+"/db", "ops"+sfx+"/db"
	_, credDir, c, ctx := credAdmin(t, []policy.Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"key.create", "key.rotate", "key.disable", "credential.put"}},
	}, kc, ko)
	secret := []byte("admin-secret-" + randHex(4))
	if _, err := c.PutCredential(ctx, "a.service", "pw", kc, append([]byte(nil), secret...), false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutCredential(ctx, "b.service", "pw", ko, append([]byte(nil), secret...), false); err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name          string
		unit, id, key string
		secret        []byte
		replace       bool
		want          error
	}{
		{"exists", "a.service", "pw", kc, secret, false, kwclient.ErrKeyExists},
		{"empty secret", "a.service", "other", kc, nil, false, kwclient.ErrInvalidArgument},
		{"bad unit", "../x", "pw", kc, secret, false, kwclient.ErrInvalidArgument},
		{"bad id", "a.service", "a/b", kc, secret, false, kwclient.ErrInvalidArgument},
		{"no such key", "a.service", "new", "creds" + sfx + "/none", secret, false, kwclient.ErrNotFound},
	}
	for _, tt := range refusals {
		if _, err := c.PutCredential(ctx, tt.unit, tt.id, tt.key, tt.secret, tt.replace); !errors.Is(err, tt.want) {
			t.Errorf("put %s: %v, want %v", tt.name, err, tt.want)
		}
	}
	fi, err := os.Stat(filepath.Join(credDir, "a.service", "pw"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stored file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(credDir, "a.service", "pw")); bytes.Contains(b, secret) {
		t.Fatal("the store holds the plaintext")
	}
	list, err := c.ListCredentials(ctx, "")
	if err != nil || len(list) != 2 || list[0].GetUnit() != "a.service" || list[0].GetKey() != kc || list[0].GetVersion() != 1 {
		t.Fatalf("list = %v, %v", list, err)
	}
	if _, err := c.RotateKey(ctx, kc); err != nil {
		t.Fatal(err)
	}
	rew, err := c.RewrapCredentials(ctx, "", "")
	if err != nil || len(rew) != 2 || rew[0].GetVersion() != 2 || rew[1].GetVersion() != 1 {
		t.Fatalf("rewrap = %v, %v", rew, err)
	}
	// A newer version that is disabled is not one to rewrap to: the
	// credential is at the newest enabled one, and stays there.
	if _, err := c.RotateKey(ctx, kc); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetVersionState(ctx, kc, 3, false); err != nil {
		t.Fatal(err)
	}
	if rew, err := c.RewrapCredentials(ctx, "a.service", "pw"); err != nil || len(rew) != 1 || rew[0].GetVersion() != 2 {
		t.Fatalf("rewrap with the newest version disabled = %v, %v", rew, err)
	}
	if _, err := c.RemoveCredential(ctx, "a.service", "pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RemoveCredential(ctx, "a.service", "pw"); !errors.Is(err, kwclient.ErrNotFound) {
		t.Fatalf("second rm: %v", err)
	}
	if list, err := c.ListCredentials(ctx, "a.service"); err != nil || len(list) != 0 {
		t.Fatalf("list after rm = %v, %v", list, err)
	}
}

// TestCredentialHygiene: a marker secret stored, served and refused leaves
// no trace in the debug log, the audit log or the metrics page.
func TestCredentialHygiene(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("credential tests need root: the requester must be uid 0 in a unit's cgroup")
	}
	var logs testutil.SyncBuffer
	sfx := randHex(4)
	unit, key := "hyg-"+sfx+".service", "hyg"+sfx+"/creds"
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	var credSock string
	r := startWith(t, []policy.Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"key.create", "credential.put"}},
		{Name: "unit", Units: []string{unit}, Keys: []string{key}, Operations: []string{"credential"}},
	}, func(c *config.Config) {
		credSock = filepath.Join(filepath.Dir(c.Socket), "credentials.sock")
		c.CredentialsSocket = credSock
		c.CredentialsDir = filepath.Join(filepath.Dir(filepath.Dir(c.Socket)), "credstore")
		c.MetricsSocket = metricsSock
	}, &logs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kwclient.Dial(ctx, r.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	marker := "HYGIENE-CREDENTIAL-" + sfx
	if _, err := c.CreateKey(ctx, key, "aes-256-gcm"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutCredential(ctx, unit, "pw", key, []byte(marker), false); err != nil {
		t.Fatal(err)
	}
	cg := testCgroup(t, unit)
	if got := askCredential(t, credSock, cg, randHex(8)+"/unit/"+unit+"/pw", 0); got != hex.EncodeToString([]byte(marker)) {
		t.Fatalf("served %q", got)
	}
	if got := askCredential(t, credSock, "", randHex(8)+"/unit/"+unit+"/pw", 0); got != "REFUSED" {
		t.Fatalf("outside the unit: %q", got)
	}
	audit, err := os.ReadFile(filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	metrics := scrape(t, metricsSock)
	if !strings.Contains(metrics, `keyward_credential_requests_total{result="OK"} 1`) ||
		!strings.Contains(metrics, `keyward_credential_requests_total{result="PERMISSION_DENIED"} 1`) {
		t.Errorf("credential metrics missing:\n%s", metrics)
	}
	for name, text := range map[string]string{"log": logs.String(), "audit log": string(audit), "metrics": metrics} {
		if strings.Contains(text, marker) || strings.Contains(text, hex.EncodeToString([]byte(marker))) {
			t.Errorf("the secret is in the %s", name)
		}
	}
	if !strings.Contains(logs.String(), "credential served") || !strings.Contains(logs.String(), "credential refused") {
		t.Errorf("no served and refused lines in the log:\n%s", logs.String())
	}
}

// TestCredentialConcurrencyBound: in the daemon, a request past the 64
// being answered is refused, not queued nor closed with nothing
// (TestCredentialBusyRefused checks the path it takes).
func TestCredentialConcurrencyBound(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("credential tests need root")
	}
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	var credSock string
	start(t, nil, func(c *config.Config) {
		credSock = filepath.Join(filepath.Dir(c.Socket), "credentials.sock")
		c.CredentialsSocket = credSock
		c.CredentialsDir = filepath.Join(filepath.Dir(filepath.Dir(c.Socket)), "credstore")
		c.MetricsSocket = metricsSock
	})
	// Each refused request is answered with 1 MiB that these never read:
	// its handler holds its slot until they close.
	var held []*os.File
	defer func() {
		for _, f := range held {
			f.Close()
		}
	}()
	dial := func() *os.File {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: credSock}); err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), "cred")
	}
	const slots = 64
	for range slots {
		f := dial()
		held = append(held, f)
		// Wait until its handler is blocked writing: the first bytes arrived.
		if _, err := f.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	extra := dial()
	defer extra.Close()
	// Refused, never empty: once the held answers' write deadline passes
	// their slots free up, so this one is refused by either path.
	if got := readAnswer(t, extra); got != "REFUSED" {
		t.Fatalf("request past the bound: %s; want the refusal", got)
	}
	if m := scrape(t, metricsSock); !strings.Contains(m, `keyward_credential_requests_total{result=`) {
		t.Errorf("credential requests not counted:\n%s", m)
	}
}

// TestCredentialPutDisplaces: a put that would take the place of a stored
// credential (replacing the unit's own, or giving an instance its own in
// place of its template's) needs credential.put on that credential's key
// too, as removing it does; putting under one's own keys is unchanged.
func TestCredentialPutDisplaces(t *testing.T) {
	sfx := randHex(4)
	pay, team := "pay"+sfx+"/db", "team"+sfx+"/db"
	r, _, c, ctx := credAdmin(t, []policy.Rule{
		{Name: "root", UIDs: []uint32{0}, Keys: []string{"**"}, Operations: []string{"key.create", "credential.put"}},
		{Name: "team admin", UIDs: []uint32{opsUID}, Keys: []string{"team" + sfx + "/**"}, Operations: []string{"credential.put"}},
	}, pay, team)
	for _, u := range []string{"pay.service", "app@.service"} {
		if _, err := c.PutCredential(ctx, u, "pw", pay, []byte("payments secret"), false); err != nil {
			t.Fatal(err)
		}
	}
	ops := as(t, r.sock, opsUID)
	for _, tt := range []struct{ line, want string }{
		{"cred-put pay.service pw " + team + " replace", "PermissionDenied PERMISSION_DENIED"},
		{"cred-put pay.service pw " + team, "PermissionDenied PERMISSION_DENIED"},
		{"cred-put app@blue.service pw " + team, "PermissionDenied PERMISSION_DENIED"},
		{"cred-rm pay.service pw", "PermissionDenied PERMISSION_DENIED"},
		{"cred-put team.service pw " + team, "OK"},
		{"cred-put team.service pw " + team + " replace", "OK"},
		{"cred-put app@blue.service other " + team, "OK"},
	} {
		expect(t, ops, tt.line, tt.want)
	}
	list, err := c.ListCredentials(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ci := range list {
		got[ci.GetUnit()+"/"+ci.GetId()] = ci.GetKey()
	}
	want := map[string]string{"pay.service/pw": pay, "app@.service/pw": pay, "team.service/pw": team, "app@blue.service/other": team}
	if !maps.Equal(got, want) {
		t.Errorf("stored: %v, want %v", got, want)
	}
}

// TestCredentialRefusalsBounded: a caller no rule names cannot write
// records without bound through credential calls (they count toward
// max_denied_per_minute like other refusals), and a name too long for any
// unit is recorded cut, so the record is written and the caller told the
// request was invalid, not that the audit log failed.
func TestCredentialRefusalsBounded(t *testing.T) {
	r := start(t, testRules(), func(c *config.Config) {
		c.CredentialsDir = filepath.Join(filepath.Dir(filepath.Dir(c.Socket)), "credstore")
		c.Limits.MaxDeniedPerMinute = 5
	})
	outsider := as(t, r.sock, outsideUID)
	expect(t, outsider, "cred-put "+strings.Repeat("u", 70000)+".service pw app/x", "InvalidArgument INVALID_REQUEST")
	for range 20 {
		outsider.do("cred-put ../x pw app/x")
	}
	recs := readAudit(t, filepath.Join(filepath.Dir(r.cfgPath), "audit", "audit.log"))
	one := 0
	for _, a := range recs {
		if a.Op == "credential.put" && a.Peer.UID == outsideUID {
			one++
			if len(a.Reason) > 1024 {
				t.Errorf("a record's reason holds %d bytes", len(a.Reason))
			}
		}
	}
	if one == 0 || one > 6 {
		t.Errorf("%d credential.put records of a caller no rule names, want 1 to 6 (max_denied_per_minute 5, then summaries)", one)
	}
}
