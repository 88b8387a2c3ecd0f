package daemon

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/keyward/keyward/api/keyward/v1"
)

// limitedUntil returns, for each abuse limit who is over in the current
// window, the limit's name and the window's end (when its calls are
// served again). Nil when none.
func (a *abuse) limitedUntil(who caller, limits map[abuseKind]int) []*pb.RateLimit {
	if a.counted.Load() == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.roll()
	var out []*pb.RateLimit
	for _, kind := range []abuseKind{abuseDenied, abuseBadMAC} {
		if c := a.counts[abuseKey{who, kind}]; c != nil && c.n > limits[kind] {
			out = append(out, &pb.RateLimit{Limit: kind.String(), PerMinute: uint32(max(limits[kind], 0)),
				Until: timestamppb.New(a.start.Add(abuseWindow).Truncate(time.Second).Add(time.Second))})
		}
	}
	return out
}
