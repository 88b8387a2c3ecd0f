package ctxflag

import "testing"

func TestFlag(t *testing.T) {
	tests := []struct {
		name    string
		sets    []string
		want    string
		wantErr bool
	}{
		{name: "none", want: ""},
		{name: "sorted", sets: []string{"b=2", "a=1"}, want: "a=1,b=2"},
		{name: "empty value", sets: []string{"a="}, want: "a="},
		{name: "value with =", sets: []string{"a=x=y"}, want: "a=x=y"},
		{name: "no =", sets: []string{"a"}, wantErr: true},
		{name: "no key", sets: []string{"=v"}, wantErr: true},
		{name: "twice", sets: []string{"a=1", "a=2"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Flag
			var err error
			for _, s := range tt.sets {
				if err = f.Set(s); err != nil {
					break
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("Set: %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && f.String() != tt.want {
				t.Errorf("String() = %q, want %q", f.String(), tt.want)
			}
		})
	}
}
