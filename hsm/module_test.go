package hsm

import (
	"fmt"
	"strings"
	"testing"
)

// TestShownText: what a token-not-found error says the module shows.
func TestShownText(t *testing.T) {
	conf := "/etc/keyward/softhsm2.conf"
	many := make([]string, maxLabelsShown+3)
	for i := range many {
		many[i] = fmt.Sprintf("t%d", i)
	}
	tests := []struct {
		name    string
		labels  []string
		softhsm bool
		conf    *string
		want    []string
		notWant []string
	}{
		{name: "softhsm, conf set", labels: []string{"keyward", "other"}, softhsm: true, conf: &conf,
			want: []string{`the token(s) "keyward", "other"`, `$SOFTHSM2_CONF, here "/etc/keyward/softhsm2.conf"`}},
		{name: "softhsm, conf unset", labels: []string{"keyward"}, softhsm: true,
			want: []string{`the token(s) "keyward"`, "$SOFTHSM2_CONF, which is unset"}},
		{name: "softhsm, no token", softhsm: true, conf: &conf, want: []string{"no initialised token", "$SOFTHSM2_CONF"}},
		{name: "other module", labels: []string{"hw"}, want: []string{`the token(s) "hw"`}, notWant: []string{"SOFTHSM2"}},
		{name: "odd label quoted", labels: []string{"a\nb"}, want: []string{`"a\nb"`}},
		{name: "many", labels: many, want: []string{`"t0"`, `"t15"`, "and 3 more"}, notWant: []string{`"t16"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shownText(tt.labels, tt.softhsm, tt.conf)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("%q has %q", got, w)
				}
			}
		})
	}
}
