package keystest

import (
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/keys"
)

// testSchedule checks the rotation period kept in a key's record and
// RotateIfDue, which the daemon's scheduler rotates through.
func testSchedule(t *testing.T, be keys.Backend) {
	s := &scheduleSuite{be: be}
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"period_kept", s.casePeriodKept},
		{"invalid_period", s.caseInvalidPeriod},
		{"out_of_service_not_due", s.caseOutOfServiceNotDue},
		{"rotate_if_due", s.caseRotateIfDue},
		{"no_period_never_due", s.caseNoPeriodNeverDue},
		{"one_winner", s.caseOneWinner},
	} {
		t.Run(c.name, c.run)
	}
}

// rotationPeriod is the period the cases set.
const rotationPeriod = 90 * 24 * time.Hour

// scheduleSuite is testSchedule's backend.
type scheduleSuite struct{ be keys.Backend }

// scheduled returns a key with the period set, and when it is due.
func (s *scheduleSuite) scheduled(t *testing.T) (string, time.Time) {
	t.Helper()
	name := create(t, s.be, keys.AES256GCM).Name
	info, err := s.be.SetRotationPeriod(t.Context(), name, rotationPeriod)
	must(t, err, "SetRotationPeriod(%s, 90d)", name)
	next, ok := info.NextRotation()
	if info.RotationPeriod != rotationPeriod || !ok || !next.Equal(info.Versions[0].Created.Add(rotationPeriod)) {
		t.Fatalf("after SetRotationPeriod: period %v, next %v %v; want %v, v1's creation + 90d", info.RotationPeriod, next, ok, rotationPeriod)
	}
	// A version made within v1's second would be due at once again
	// (creation times are in whole seconds): start in the next one.
	for !time.Now().UTC().Truncate(time.Second).After(info.Versions[0].Created) {
		time.Sleep(50 * time.Millisecond)
	}
	return name, next
}

func (s *scheduleSuite) casePeriodKept(t *testing.T) {
	name, _ := s.scheduled(t)
	info := describe(t, s.be, name, keys.Enabled)
	if info.RotationPeriod != rotationPeriod {
		t.Errorf("DescribeKey: period %v, want %v", info.RotationPeriod, rotationPeriod)
	}
	info = rotate(t, s.be, name)
	if next, _ := info.NextRotation(); info.RotationPeriod != rotationPeriod || !next.Equal(info.Versions[1].Created.Add(rotationPeriod)) {
		t.Errorf("after a rotation: period %v, next %v; want %v from v2's creation", info.RotationPeriod, next, rotationPeriod)
	}
	info, err := s.be.SetRotationPeriod(t.Context(), name, 0)
	must(t, err, "SetRotationPeriod(%s, 0)", name)
	if _, ok := info.NextRotation(); ok || info.RotationPeriod != 0 {
		t.Errorf("period 0: next rotation still set (%v)", info.RotationPeriod)
	}
	if info = describe(t, s.be, name, keys.Enabled, keys.Enabled); info.RotationPeriod != 0 {
		t.Errorf("DescribeKey after period 0: %v", info.RotationPeriod)
	}
}

func (s *scheduleSuite) caseInvalidPeriod(t *testing.T) {
	name := create(t, s.be, keys.AES256GCM).Name
	for _, d := range []time.Duration{-time.Hour, time.Minute, keys.MinRotationPeriod - time.Second, keys.MaxRotationPeriod + time.Hour, time.Hour + time.Millisecond} {
		_, err := s.be.SetRotationPeriod(t.Context(), name, d)
		wantErr(t, err, "SetRotationPeriod("+d.String()+")", keys.ErrInvalidArgument)
	}
	_, err := s.be.SetRotationPeriod(t.Context(), newName(t), rotationPeriod)
	wantErr(t, err, "SetRotationPeriod of a missing key", keys.ErrKeyNotFound)
}

func (s *scheduleSuite) caseOutOfServiceNotDue(t *testing.T) {
	name, next := s.scheduled(t)
	setState(t, s.be, name, 1, keys.Disabled)
	info, rotated, err := s.be.RotateIfDue(t.Context(), name, next.Add(1000*time.Hour))
	must(t, err, "RotateIfDue of a key with no enabled version")
	if rotated || len(info.Versions) != 1 {
		t.Fatalf("a key an admin disabled: rotated %v, %d versions; want it left out of service", rotated, len(info.Versions))
	}
}

func (s *scheduleSuite) caseRotateIfDue(t *testing.T) {
	name, next := s.scheduled(t)
	info, rotated, err := s.be.RotateIfDue(t.Context(), name, next.Add(-time.Second))
	must(t, err, "RotateIfDue before due")
	if rotated || len(info.Versions) != 1 {
		t.Fatalf("a second before it is due: rotated %v, %d versions", rotated, len(info.Versions))
	}
	info, rotated, err = s.be.RotateIfDue(t.Context(), name, next)
	must(t, err, "RotateIfDue when due")
	if !rotated {
		t.Fatal("RotateIfDue at the due time did not rotate")
	}
	checkVersions(t, info, keys.Enabled, keys.Enabled)
	info, rotated, err = s.be.RotateIfDue(t.Context(), name, next)
	must(t, err, "RotateIfDue again")
	if rotated || len(info.Versions) != 2 {
		t.Fatalf("again at the same time: rotated %v, %d versions; want no rotation", rotated, len(info.Versions))
	}
	_, _, err = s.be.RotateIfDue(t.Context(), newName(t), next)
	wantErr(t, err, "RotateIfDue of a missing key", keys.ErrKeyNotFound)
}

func (s *scheduleSuite) caseNoPeriodNeverDue(t *testing.T) {
	name := create(t, s.be, keys.AES256GCM).Name
	info, rotated, err := s.be.RotateIfDue(t.Context(), name, time.Now().Add(keys.MaxRotationPeriod*2))
	must(t, err, "RotateIfDue without a period")
	if rotated || len(info.Versions) != 1 {
		t.Fatalf("a key without a period rotated: %d versions", len(info.Versions))
	}
}

func (s *scheduleSuite) caseOneWinner(t *testing.T) {
	name, next := s.scheduled(t)
	const n = 4
	var wg sync.WaitGroup
	wins := make(chan bool, n)
	for range n {
		wg.Go(func() {
			_, rotated, err := s.be.RotateIfDue(t.Context(), name, next)
			if err != nil {
				t.Errorf("RotateIfDue: %v", err)
			}
			wins <- rotated
		})
	}
	wg.Wait()
	close(wins)
	won := 0
	for w := range wins {
		if w {
			won++
		}
	}
	if won != 1 {
		t.Errorf("%d of %d concurrent RotateIfDue rotated, want 1", won, n)
	}
	describe(t, s.be, name, keys.Enabled, keys.Enabled)
}
