package userservice

// User is the record the service stores and caches. Version starts at 1 and grows by one with
// each write: a reader that saw version n after a write returned knows it is not stale.
type User struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Email   string `json:"email"`
	Version int64  `json:"version"`
}
