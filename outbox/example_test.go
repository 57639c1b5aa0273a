package outbox_test

import (
	"context"
	"database/sql"
	"log"
	"strconv"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/outbox"
)

// A write and its invalidation in one transaction: after Do returns nil, the cache no longer
// serves the old user; if the process dies after the commit, or Redis is down, a relay
// (this process's or another's) delivers the invalidation later.
func Example() {
	var (
		db    *sql.DB                   // PostgreSQL, through any database/sql driver
		users *cacheaside.Cache[string] // the cache of users' names
		ctx   = context.Background()
		id    = int64(42)
	)
	box, err := outbox.New(db, outbox.WithCache("users", users))
	if err != nil {
		log.Fatal(err)
	}
	defer box.Close()

	err = box.Do(ctx, nil, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET name = $1 WHERE id = $2`, "Ada", id); err != nil {
			return err
		}
		return box.Invalidate(ctx, tx, "users", strconv.FormatInt(id, 10))
	})
	if err != nil {
		log.Fatal(err)
	}
}

// A transaction of your own: Invalidate in it, then Wake after the commit for delivery at
// once (else the relay delivers at its next poll).
func ExampleOutbox_Invalidate() {
	var (
		db  *sql.DB
		box *outbox.Outbox
		ctx = context.Background()
	)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }() // after Commit: sql.ErrTxDone, nothing to undo
	if _, err := tx.ExecContext(ctx, `DELETE FROM users WHERE id = $1`, 42); err != nil {
		log.Fatal(err)
	}
	if err := box.Invalidate(ctx, tx, "users", "42"); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	box.Wake()
}

// Tags in the outbox: the product's own entry by key, and every list and search page that
// shows it by tag (loaded with cacheaside.Tags("product:42")), both delivered after the commit.
func ExampleOutbox_InvalidateTags() {
	var (
		db       *sql.DB
		products *cacheaside.Cache[string]
		lists    *cacheaside.Cache[[]string]
		ctx      = context.Background()
	)
	box, err := outbox.New(db, outbox.WithCache("products", products), outbox.WithCache("lists", lists))
	if err != nil {
		log.Fatal(err)
	}
	defer box.Close()

	err = box.Do(ctx, nil, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE products SET price = $1 WHERE id = $2`, 1999, 42); err != nil {
			return err
		}
		if err := box.Invalidate(ctx, tx, "products", "42"); err != nil {
			return err
		}
		return box.InvalidateTags(ctx, tx, "lists", "product:42")
	})
	if err != nil {
		log.Fatal(err)
	}
}
