package userservice

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strconv"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/outbox"
)

// Repository reads users through the cache and writes them to the database, invalidating the
// cache after each write. This is the whole cache-aside pattern:
//
//	read:  cache.GetOrLoad(key, load from the database)
//	write: write the database, then cache.Invalidate(key)
//
// On PostgreSQL the invalidation goes through the transactional outbox instead: written in
// the write's own transaction, delivered right after its commit, and redelivered by a relay
// if this process dies first or Redis is down (package outbox):
//
//	write: box.Do(tx: write the database; box.Invalidate(tx, "users", key))
//
// With a nil cache (Config.NoCache) every read goes to the database.
type Repository struct {
	db    *database
	users *cacheaside.Cache[User] // nil: no cache
	box   *outbox.Outbox          // nil: Invalidate after commit (SQLite, or no cache)
	stats *counters
	log   *slog.Logger
}

func userKey(id int64) string { return strconv.FormatInt(id, 10) }

// Get returns the user with id, or an error wrapping cacheaside.ErrNotFound. A not-found is
// cached too (for the cache's negative TTL), so asking again for a missing user does not
// query the database.
func (r *Repository) Get(ctx context.Context, id int64) (User, error) {
	r.stats.reads.Add(1)
	if r.users == nil {
		return r.db.get(ctx, id)
	}
	return r.users.GetOrLoad(ctx, userKey(id), func(ctx context.Context) (User, error) {
		return r.db.get(ctx, id)
	})
}

// GetMany returns the users of ids that exist. The cache calls the loader once, with only
// the ids it does not hold: one database query for all of them.
func (r *Repository) GetMany(ctx context.Context, ids []int64) (map[int64]User, error) {
	r.stats.reads.Add(int64(len(ids)))
	if r.users == nil {
		return r.db.getMany(ctx, ids)
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = userKey(id)
	}
	got, err := r.users.GetOrLoadMany(ctx, keys, func(ctx context.Context, missing []string) (map[string]User, error) {
		mids := make([]int64, 0, len(missing))
		for _, k := range missing {
			id, err := strconv.ParseInt(k, 10, 64)
			if err != nil {
				return nil, err
			}
			mids = append(mids, id)
		}
		found, err := r.db.getMany(ctx, mids)
		if err != nil {
			return nil, err
		}
		out := make(map[string]User, len(found))
		for id, u := range found {
			out[userKey(id)] = u // ids left out are cached as not found
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[int64]User, len(got))
	for _, u := range got {
		out[u.ID] = u
	}
	return out, nil
}

// Put creates or updates a user in the database, then invalidates its cache entry, and
// returns it with its new version. Once Put returns, no read sees an older version.
func (r *Repository) Put(ctx context.Context, u User) (User, error) {
	if r.box != nil {
		err := r.box.Do(ctx, nil, func(tx *sql.Tx) error {
			var err error
			if u, err = r.db.put(ctx, tx, u); err != nil {
				return err
			}
			return r.box.Invalidate(ctx, tx, "users", userKey(u.ID))
		})
		return u, err
	}
	u, err := r.db.put(ctx, nil, u)
	if err != nil {
		return User{}, err
	}
	r.invalidate(ctx, u.ID)
	return u, nil
}

// Delete removes a user from the database, then invalidates its cache entry. A missing user
// is an error wrapping cacheaside.ErrNotFound.
func (r *Repository) Delete(ctx context.Context, id int64) error {
	if r.box != nil {
		return r.box.Do(ctx, nil, func(tx *sql.Tx) error {
			if err := r.db.delete(ctx, tx, id); err != nil {
				return err // not found included: nothing to invalidate, nothing committed
			}
			return r.box.Invalidate(ctx, tx, "users", userKey(id))
		})
	}
	err := r.db.delete(ctx, nil, id)
	if err != nil && !errors.Is(err, cacheaside.ErrNotFound) {
		return err
	}
	r.invalidate(ctx, id)
	return err
}

// invalidate runs after a write that has committed: it must not be cut short by the client
// going away, so it runs detached from the request's cancellation, bounded by
// Config.InvalidateTimeout (Invalidate retries a busy store within it; a request must not hang
// on a store that is down). If the store cannot be reached the write still stands; the old entry
// then lives until its TTL, which is what bounds staleness in that case (the outbox closes
// that gap), and the failure is counted and logged.
func (r *Repository) invalidate(ctx context.Context, id int64) {
	if r.users == nil {
		return
	}
	if err := r.users.Invalidate(context.WithoutCancel(ctx), userKey(id)); err != nil {
		r.stats.invalidateErrors.Add(1)
		r.log.Warn("cache invalidation failed; the entry lives until its TTL", "user", id, "err", err)
	}
}
