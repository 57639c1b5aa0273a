// Package models is version 2 of a model package (tests only).
package models

// User is version 2 of a user record: Email gave way to Phone, and Active is new.
type User struct {
	ID     int    `json:"id" msgpack:"id"`
	Phone  string `json:"phone" msgpack:"phone"`
	Active bool   `json:"active" msgpack:"active"`
}
