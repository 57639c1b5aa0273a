package pgxoutbox_test

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/outbox"
	"github.com/cacheaside/cacheaside/outbox/pgxoutbox"
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("database/sql.(*DB).connectionOpener"))
}

func pgDSN() string {
	if d := os.Getenv("CACHEASIDE_PG_DSN"); d != "" {
		return d
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

type invalidator chan []string

func (c invalidator) Invalidate(_ context.Context, keys ...string) error {
	c <- keys
	return nil
}

func setup(t *testing.T) (*sql.DB, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:5432", time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is not answering: %v", err)
		}
		t.Skipf("PostgreSQL is not answering: %v", err)
	}
	conn.Close()
	db, err := sql.Open("pgx", pgDSN())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	_, _ = crand.Read(b)
	table := "cacheaside_outbox_pgx_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		_, _ = db.Exec(`DROP TABLE IF EXISTS ` + table)
		db.Close()
	})
	return db, table
}

// With WithNotify and a Listener, a row written in a pgx transaction of the caller's own is
// delivered at commit, though the relay polls only once an hour.
func TestListenerDeliversAtCommit(t *testing.T) {
	db, table := setup(t)
	got := make(invalidator, 10)
	box, err := outbox.New(db, outbox.WithTable(table), outbox.WithCache("users", got), outbox.WithNotify(), outbox.WithPollInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close()
	select { // New's first pass
	case k := <-got:
		t.Fatalf("delivered %v before any write", k)
	case <-time.After(50 * time.Millisecond):
	}
	l, err := pgxoutbox.Listen(pgDSN(), box)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(30 * time.Second)
	for live, _ := l.Listening(); !live; live, _ = l.Listening() {
		if time.Now().After(deadline) {
			t.Fatal("the listener is not listening after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, commit := range []bool{false, true} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := pgxoutbox.Invalidate(ctx, box, tx, "users", "42"); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	select {
	case k := <-got:
		if len(k) != 1 || k[0] != "42" {
			t.Fatalf("delivered %v, want [42]", k)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("not delivered 30s after the commit: the NOTIFY did not wake the relay")
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := pgxoutbox.Invalidate(ctx, box, tx, "nope", "k"); !errors.Is(err, outbox.ErrUnknownCache) {
		t.Fatalf("unknown cache: %v", err)
	}
	if err := pgxoutbox.Invalidate(ctx, box, tx, "users"); !errors.Is(err, outbox.ErrNoKeys) {
		t.Fatalf("no keys: %v", err)
	}
}

// A Listener on a server that does not answer keeps retrying, reports the error, and closes.
func TestListenerRetriesAndCloses(t *testing.T) {
	db, table := setup(t)
	box, err := outbox.New(db, outbox.WithTable(table), outbox.WithCache("users", make(invalidator, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close()
	if _, err := pgxoutbox.Listen("postgres://%zz", box); err == nil {
		t.Fatal("a bad connection string was accepted")
	}
	l, err := pgxoutbox.Listen("postgres://postgres@127.0.0.1:1/test?connect_timeout=1", box)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, err := l.Listening(); err == nil; _, err = l.Listening() {
		if time.Now().After(deadline) {
			t.Fatal("no connection error reported after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// tagInvalidator records the tags delivered to it.
type tagInvalidator chan []string

func (c tagInvalidator) Invalidate(context.Context, ...string) error { return nil }

func (c tagInvalidator) InvalidateTags(_ context.Context, tags ...string) error {
	c <- tags
	return nil
}

// InvalidateTags in a pgx transaction: delivered by the relay after the commit, not after a
// rollback; a cache without tag support is refused.
func TestInvalidateTags(t *testing.T) {
	db, table := setup(t)
	got := make(tagInvalidator, 10)
	box, err := outbox.New(db, outbox.WithTable(table), outbox.WithCache("lists", got),
		outbox.WithCache("keys-only", make(invalidator, 1)), outbox.WithPollInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, commit := range []bool{false, true} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tag := "product:rolled-back"
		if commit {
			tag = "product:42"
		}
		if err := pgxoutbox.InvalidateTags(ctx, box, tx, "lists", tag); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	select {
	case tags := <-got:
		if len(tags) != 1 || tags[0] != "product:42" {
			t.Fatalf("delivered %v, want [product:42]", tags)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("not delivered 30s after the commit")
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows left 30s after the delivery", n)
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := pgxoutbox.InvalidateTags(ctx, box, tx, "keys-only", "t"); !errors.Is(err, outbox.ErrTagsUnsupported) {
		t.Fatalf("cache without tags: %v", err)
	}
	if err := pgxoutbox.InvalidateTags(ctx, box, tx, "lists"); !errors.Is(err, outbox.ErrNoTags) {
		t.Fatalf("no tags: %v", err)
	}
}
