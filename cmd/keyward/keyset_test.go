package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	keywardv1 "github.com/keyward/keyward/api/keyward/v1"
	"github.com/keyward/keyward/keys"
)

// fixedKey answers SetVersionState with one key as it stands after the
// change: v1 superseded 60 days ago, v2 a day ago, v3 the newest.
type fixedKey struct {
	keywardv1.UnimplementedKeywardServer
	after time.Duration
}

func (f fixedKey) SetVersionState(_ context.Context, req *keywardv1.SetVersionStateRequest) (*keywardv1.KeyInfo, error) {
	return f.key(req.GetKey()), nil
}

func (f fixedKey) SetDisableAfter(_ context.Context, req *keywardv1.SetDisableAfterRequest) (*keywardv1.KeyInfo, error) {
	f.after = time.Duration(req.GetDisableAfterSeconds()) * time.Second
	return f.key(req.GetKey()), nil
}

func (f fixedKey) key(name string) *keywardv1.KeyInfo {
	now := time.Now()
	ver := func(v uint32, created time.Time) *keywardv1.KeyVersion {
		return &keywardv1.KeyVersion{Version: v, State: keywardv1.VersionState_ENABLED, Created: timestamppb.New(created)}
	}
	return &keywardv1.KeyInfo{Key: name, KeyType: "aes-256-gcm", DisableAfterSeconds: uint64(f.after / time.Second),
		Versions: []*keywardv1.KeyVersion{ver(1, now.Add(-100*24*time.Hour)), ver(2, now.Add(-60*24*time.Hour)), ver(3, now.Add(-24*time.Hour))}}
}

// TestEnableNoteDisableDue: key enable notes on stderr that keywardd will
// disable the version again exactly when the scheduler would: a delay is
// set, the version is not the newest enabled, and its successor is older
// than the delay.
func TestEnableNoteDisableDue(t *testing.T) {
	for _, tc := range []struct {
		name    string
		after   time.Duration
		version string
		note    bool
	}{
		{"superseded past the delay", 30 * 24 * time.Hour, "1", true},
		{"superseded within the delay", 30 * 24 * time.Hour, "2", false},
		{"the newest", 30 * 24 * time.Hour, "3", false},
		{"no delay", 0, "1", false},
		{"successor just old enough", 60*24*time.Hour - time.Hour, "1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.sock")
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer()
			keywardv1.RegisterKeywardServer(g, fixedKey{after: tc.after})
			go g.Serve(l)
			defer g.Stop()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"--socket", path, "key", "enable", "app/db", "--version", tc.version}, strings.NewReader(""), &stdout, &stderr)
			if code != 0 || !strings.HasPrefix(stdout.String(), "enabled app/db") {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
			}
			want := "keyward: note: app/db disables versions " + keys.FormatPeriod(tc.after) + " after the next one; v" + tc.version + " is past that"
			if got := stderr.String(); tc.note != strings.HasPrefix(got, want) || !tc.note && got != "" {
				t.Errorf("stderr %q; want a note %v (%q)", got, tc.note, want)
			}
		})
	}
}

// TestSetDisableAfterNote: key set --disable-versions-after names on
// stderr the versions keywardd disables at its next check because of it.
func TestSetDisableAfterNote(t *testing.T) {
	for _, tc := range []struct{ after, want string }{
		{"30d", "keyward: note: keywardd disables v1 of app/db at its next check (within rotation_check_interval)\n"},
		{"1d", "keyward: note: keywardd disables v1, v2 of app/db at its next check (within rotation_check_interval)\n"},
		{"90d", ""},
		{"0", ""},
	} {
		path := filepath.Join(t.TempDir(), "k.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		keywardv1.RegisterKeywardServer(g, fixedKey{})
		go g.Serve(l)
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"--socket", path, "key", "set", "app/db", "--disable-versions-after", tc.after}, strings.NewReader(""), &stdout, &stderr)
		g.Stop()
		if code != 0 || !strings.HasPrefix(stdout.String(), "set app/db") || stderr.String() != tc.want {
			t.Errorf("--disable-versions-after %s: exit %d, stdout %q, stderr %q; want stderr %q", tc.after, code, stdout.String(), stderr.String(), tc.want)
		}
	}
}
