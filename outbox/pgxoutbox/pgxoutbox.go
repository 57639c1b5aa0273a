// Package pgxoutbox is the pgx-native side of package outbox: Invalidate and InvalidateTags
// in a pgx.Tx, and a Listener that wakes an Outbox's relay on LISTEN/NOTIFY, so that rows
// written in transactions of your own are delivered at once instead of at the relay's next
// poll. It is a package of its own so that package outbox links no driver.
//
//	box, _ := outbox.New(db, outbox.WithCache("users", users), outbox.WithNotify())
//	l, _ := pgxoutbox.Listen(connString, box)
//	defer l.Close()
//
//	tx, _ := conn.Begin(ctx) // pgx
//	_, _ = tx.Exec(ctx, `UPDATE users SET name = $1 WHERE id = $2`, name, id)
//	_ = pgxoutbox.Invalidate(ctx, box, tx, "users", "42")
//	_ = pgxoutbox.InvalidateTags(ctx, box, tx, "users", "team:7") // entries loaded with cacheaside.Tags("team:7")
//	_ = tx.Commit(ctx) // the NOTIFY wakes every listening relay
package pgxoutbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cacheaside/cacheaside/outbox"
	"github.com/jackc/pgx/v5"
)

// Invalidate writes into tx, a pgx transaction, a row naming keys of the cache registered
// in box as cache, as box.Invalidate does in a database/sql transaction of your own: the keys
// are invalidated at least once after tx commits, by a relay (at once with WithNotify and a
// Listener, else at its next poll). It returns the errors of box.Invalidate.
func Invalidate(ctx context.Context, box *outbox.Outbox, tx pgx.Tx, cache string, keys ...string) error {
	stmts, err := box.Statements(cache, keys...)
	if err != nil {
		return err
	}
	return exec(ctx, tx, stmts)
}

// InvalidateTags writes into tx, a pgx transaction, a row naming tags of the cache registered
// in box as cache, as box.InvalidateTags does in a database/sql transaction of your own: every
// entry tagged with one of them is invalidated at least once after tx commits, by a relay. It
// returns the errors of box.InvalidateTags.
func InvalidateTags(ctx context.Context, box *outbox.Outbox, tx pgx.Tx, cache string, tags ...string) error {
	stmts, err := box.TagStatements(cache, tags...)
	if err != nil {
		return err
	}
	return exec(ctx, tx, stmts)
}

func exec(ctx context.Context, tx pgx.Tx, stmts []outbox.Statement) error {
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s.SQL, s.Args...); err != nil {
			return fmt.Errorf("cacheaside: outbox: %w", err)
		}
	}
	return nil
}

// Listener holds a connection of its own that LISTENs on box's channel (its table's name)
// and wakes box's relay on every notification, and once after each (re)connection, since
// notifications sent while it was not listening are lost. It reconnects with backoff (100ms
// doubling to 5s) until Close.
type Listener struct {
	stop context.CancelFunc
	done chan struct{}

	mu   sync.Mutex
	err  error // the last connection error, nil while listening
	live bool
}

// Listen starts a Listener on connString (a pgx connection string or URL). It returns an
// error only for a connection string that does not parse; a server that does not answer is
// retried in the background.
func Listen(connString string, box *outbox.Outbox) (*Listener, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("cacheaside: outbox: pgx connection string: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	l := &Listener{stop: stop, done: make(chan struct{})}
	go l.run(ctx, cfg, box)
	return l, nil
}

// Listening reports whether the Listener is connected and listening now, and the last
// connection error otherwise.
func (l *Listener) Listening() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live, l.err
}

// Close stops the Listener and waits for it. It is idempotent.
func (l *Listener) Close() error {
	l.stop()
	<-l.done
	return nil
}

func (l *Listener) set(live bool, err error) {
	l.mu.Lock()
	l.live, l.err = live, err
	l.mu.Unlock()
}

func (l *Listener) run(ctx context.Context, cfg *pgx.ConnConfig, box *outbox.Outbox) {
	defer close(l.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := l.listen(ctx, cfg, box)
		if ctx.Err() != nil {
			break
		}
		if live, _ := l.Listening(); live {
			backoff = 100 * time.Millisecond // it had worked: a fresh failure
		}
		l.set(false, err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		backoff = min(2*backoff, 5*time.Second)
	}
	l.set(false, nil)
}

// listen connects, listens and wakes box until the connection fails or ctx ends.
func (l *Listener) listen(ctx context.Context, cfg *pgx.ConnConfig, box *outbox.Outbox) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn.Close(cctx)
		cancel()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{box.Table()}.Sanitize()); err != nil {
		return err
	}
	l.set(true, nil)
	box.Wake() // rows committed while nobody listened
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		box.Wake()
	}
}
