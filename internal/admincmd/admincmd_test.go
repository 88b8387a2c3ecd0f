package admincmd

import "testing"

func TestIs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"doctor"}, true},
		{[]string{"bench-baseline", "--op", "wrap"}, true},
		{[]string{"help", "demo"}, true},
		{[]string{"help"}, false},
		{[]string{"help", "bogus"}, false},
		{[]string{"--dev"}, false},
		{[]string{"--config", "doctor"}, false},
	} {
		if got := Is(tc.args); got != tc.want {
			t.Errorf("Is(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
