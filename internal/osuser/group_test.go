package osuser

import "testing"

func TestLookupGroup(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"0", 0, false},
		{"4242", 4242, false},
		{"root", 0, false},
		{"no-such-group-keyward", 0, true},
	} {
		got, err := LookupGroup(c.in)
		if (err != nil) != c.wantErr || err == nil && got != c.want {
			t.Errorf("LookupGroup(%q) = %d, %v", c.in, got, err)
		}
	}
}
