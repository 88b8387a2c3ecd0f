package credstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

// maxList bounds how many entries List returns.
const maxList = 10000

// List returns the store's credentials, of one unit or ("") of every unit,
// sorted by unit and id. An entry that cannot be read is listed with its
// error; names the store would never have written are skipped. A store
// that does not exist yet is empty.
func (s *Store) List(unit string) ([]Entry, error) {
	if unit != "" {
		if err := CheckUnit(unit); err != nil {
			return nil, err
		}
	}
	root, err := s.openRoot(false)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	units := []string{unit}
	if unit == "" {
		if units, err = names(root, func(n string) bool { return CheckUnit(n) == nil }); err != nil {
			return nil, err
		}
	}
	var out []Entry
	for _, u := range units {
		es, err := s.listUnit(root, u)
		if errors.Is(err, ErrNotFound) && unit != "" {
			return nil, nil
		}
		if err != nil {
			out = append(out, Entry{Unit: u, Err: err})
			continue
		}
		out = append(out, es...)
		if len(out) > maxList {
			return nil, fmt.Errorf("credstore: more than %d credentials", maxList)
		}
	}
	return out, nil
}

func (s *Store) listUnit(root int, unit string) ([]Entry, error) {
	dfd, err := s.openDir(root, unit)
	if err != nil {
		return nil, err
	}
	ids, err := names(dfd, func(n string) bool { return CheckID(n) == nil })
	unix.Close(dfd)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(ids))
	for _, id := range ids {
		b, mod, err := s.readAt(root, unit, id)
		out = append(out, Entry{Unit: unit, ID: id, Blob: b, Modified: mod, Err: err})
	}
	return out, nil
}

// names lists the directory fd's entries that keep, sorted.
func names(fd int, keep func(string) bool) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("credstore: %w", err)
	}
	f := os.NewFile(uintptr(dup), "credstore")
	defer f.Close()
	all, err := f.Readdirnames(maxList + 1)
	if err != nil && !errors.Is(err, io.EOF) { // EOF: an empty directory
		return nil, fmt.Errorf("credstore: list: %w", err)
	}
	var out []string
	for _, n := range all {
		if keep(n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}
