package accessreview

import "errors"

// ErrNoRecords: the trail holds no record at all. A log truncated to
// nothing, or with its rotated files removed, looks like a new one, so a
// review of it is refused unless Options.AllowEmpty says it is new.
var ErrNoRecords = errors.New("the audit trail holds no record")
