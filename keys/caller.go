package keys

import "context"

type callerKey struct{}

// WithCaller names who a device call is made for (the daemon: a caller's
// uid and systemd unit), so that a device that runs one call at a time can
// take turns between callers instead of serving them in arrival order
// (tpm.TPM does). It is never used to decide whether a call is allowed.
func WithCaller(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, callerKey{}, who)
}

// CallerOf returns the name WithCaller gave ctx, or "".
func CallerOf(ctx context.Context) string {
	who, _ := ctx.Value(callerKey{}).(string)
	return who
}

// TurnTaker is a device that takes turns between callers by the name
// WithCaller gives (tpm.TPM). Others ignore the name: a caller need not
// name itself for them.
type TurnTaker interface {
	TakesTurns() bool
}
