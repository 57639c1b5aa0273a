// Package outbox makes cache invalidation transactional: the keys a database write makes stale
// are written, in the same transaction as the write, to an outbox table in the service's own
// PostgreSQL database, and a relay in every process that runs an Outbox invalidates them and
// deletes the row. No invalidation is lost to a process that dies after its commit, or to a
// store that is unreachable when the write commits.
//
// Guarantee: after a transaction that called Invalidate commits, every key it named is
// invalidated (through the Invalidator registered under the cache's name, for a
// cacheaside.Cache its Invalidate) at least once, within the relay delay once the store
// answers; a read that starts after that delivery never sees the old value, since an
// Invalidate voids every lease granted before it, so a load that read the old row cannot
// store it after the delivery either. The relay delay is: none for a transaction run by Do
// (it delivers in the caller's goroutine right after the commit); at most the poll interval
// (WithPollInterval) for a row written in a transaction of the caller's own, or sooner when
// Wake is called (package pgxoutbox calls it on LISTEN/NOTIFY); the lease (WithLease) for a
// row whose writer died before delivering it; and up to the retry backoff's maximum
// (WithRetryBackoff) after the store comes back from an outage. A row is deleted only after
// its delivery succeeded, and never dropped: a row that cannot be decoded is parked (kept,
// with parked_at set and the error in last_error) and logged.
//
// Tags travel the same way: InvalidateTags writes a row naming tags (cacheaside.Tags) of a
// cache whose Invalidator is also a TagInvalidator, as *cacheaside.Cache[T] is; after the
// commit every entry tagged with one of them is invalidated at least once, through its
// InvalidateTags, with the same delays.
//
// The package works with database/sql and PostgreSQL (any driver: pgx's stdlib, lib/pq) and
// links no driver itself.
//
//	box, err := outbox.New(db, outbox.WithCache("users", users))
//	if err != nil { ... }
//	defer box.Close()
//
//	err = box.Do(ctx, nil, func(tx *sql.Tx) error {
//		if _, err := tx.ExecContext(ctx, `UPDATE users SET name = $1 WHERE id = $2`, name, id); err != nil {
//			return err
//		}
//		return box.Invalidate(ctx, tx, "users", strconv.FormatInt(id, 10))
//	})
//
// The table (default cacheaside_outbox) is created if missing; Schema returns its SQL for a
// migration tool.
package outbox
