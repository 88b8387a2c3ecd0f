package keywardtest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestExternalModule: an application's module that requires keyward uses
// keywardtest with nothing else set up (no TestMain, no keywardd binary).
func TestExternalModule(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"go.mod": "module example.com/app\n\ngo 1.26.0\n\nrequire github.com/keyward/keyward v0.0.0\n\nreplace github.com/keyward/keyward => " + root + "\n",
		"go.sum": string(sum),
		"app_test.go": `package app

import (
	"context"
	"testing"

	"github.com/keyward/keyward/keywardtest"
)

func TestWrap(t *testing.T) {
	kw := keywardtest.Start(t, keywardtest.WithKey("app/db", "aes-256-gcm"))
	ctx := context.Background()
	w, err := kw.Client.Wrap(ctx, "app/db", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := kw.Client.Unwrap(ctx, w.GetCiphertext(), nil); err != nil || string(u.GetPlaintext()) != "x" {
		t.Fatal(err)
	}
}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-count=1", "-mod=mod", ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test in an application's module: %v\n%s", err, out)
	}
}
