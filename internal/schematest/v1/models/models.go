// Package models is version 1 of a model package (tests only).
package models

// User is version 1 of a user record.
type User struct {
	ID    int    `json:"id" msgpack:"id"`
	Email string `json:"email" msgpack:"email"`
}
