package config

import (
	"errors"
	"slices"
	"strings"
)

// DevKeys are the top-level keys keywardd --dev takes from a config file
// (--dev --config FILE): the policy, the limits and the log level. The
// device, the socket and the audit log stay the dev mode's own.
var DevKeys = []string{"rule", "limits", "log_level"}

// LoadDevConfig reads a config file for --dev: strictly, as LoadConfig, and
// a key outside DevKeys is an error naming its line, so that nothing in the
// file is silently ignored. The file must be owned by root or this user and
// not writable by group or others (see readDevFile). The policy is not
// compiled here.
func LoadDevConfig(path string) (Config, error) {
	b, err := readDevFile(path)
	if err != nil {
		return Config{}, err
	}
	doc, err := scanConfig(path, b)
	if err != nil {
		return Config{}, err
	}
	first := map[string]int{} // top-level key outside DevKeys -> its first line
	for key, line := range doc.lines {
		top := topKey(key)
		if slices.Contains(DevKeys, top) {
			continue
		}
		if l, ok := first[top]; !ok || line < l {
			first[top] = line
		}
	}
	var errs []error
	for top, line := range first {
		errs = append(errs, &ConfigError{File: path, Line: line, Key: top,
			Msg: "is not used by keywardd --dev, which takes only " + strings.Join(DevKeys, ", ") + " from the file (the device, socket and audit log are its own): remove it, or run without --dev"})
	}
	slices.SortFunc(errs, func(a, b error) int { return a.(*ConfigError).Line - b.(*ConfigError).Line })
	cfg, err := ParseConfig(path, b)
	errs = append(errs, devProblems(err)...)
	return cfg, errors.Join(errs...)
}

// topKey is the top-level key of a dotted key: "rule[2].keys" -> "rule".
func topKey(key string) string {
	if i := strings.IndexAny(key, ".["); i >= 0 {
		return key[:i]
	}
	return key
}

// devProblems keeps ParseConfig's problems with what --dev takes from the
// file: the rest of the file is refused above, and its defaults (the
// backend's, say) are not used.
func devProblems(err error) []error {
	var out []error
	for _, e := range flatten(err) {
		var ce *ConfigError
		if errors.As(e, &ce) && ce.Key != "" && !slices.Contains(DevKeys, topKey(ce.Key)) {
			continue
		}
		out = append(out, e)
	}
	return out
}
