package bench

import (
	"context"
	"database/sql"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/outbox"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

func pgDSN() string {
	if d := os.Getenv("CACHEASIDE_PG_DSN"); d != "" {
		return d
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// openPG opens the PostgreSQL database test (skipped, or failed in CI, when it does not
// answer) and returns a table name of this benchmark's own: it and name+"_data" are dropped
// at the end.
func openPG(b *testing.B) (*sql.DB, string) {
	b.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:5432", time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatalf("PostgreSQL is not answering (%v); CI must run this", err)
		}
		b.Skipf("PostgreSQL is not answering: %v", err)
	}
	conn.Close()
	db, err := sql.Open("pgx", pgDSN())
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	table := "cacheaside_outbox_bench_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	b.Cleanup(func() {
		_, _ = db.Exec(`DROP TABLE IF EXISTS ` + table)
		_, _ = db.Exec(`DROP TABLE IF EXISTS ` + table + `_data`)
		db.Close()
	})
	if _, err := db.Exec(`CREATE TABLE ` + table + `_data (id bigint PRIMARY KEY, name text NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO ` + table + `_data SELECT g, 'user-' || g FROM generate_series(0, 1023) g`); err != nil {
		b.Fatal(err)
	}
	return db, table
}

// BenchmarkOutbox measures the transactional outbox on the local PostgreSQL and Redis:
//
//   - write/plain: a transaction that updates one row and commits, then Cache.Invalidate of
//     its key: the write without the outbox.
//   - write/outbox: the same through Outbox.Do, which adds the outbox row to the transaction
//     and, after the commit, invalidates the key and deletes the row. The difference is the
//     outbox's extra latency per write.
//   - relay: b.N rows already committed, delivered by one relay (batches of 100, one
//     Invalidate per batch): rows/s.
func BenchmarkOutbox(b *testing.B) {
	update := func(ctx context.Context, tx *sql.Tx, table string, id int) error {
		_, err := tx.ExecContext(ctx, `UPDATE `+table+`_data SET name = $1 WHERE id = $2`, "n"+strconv.Itoa(id), id%1024)
		return err
	}
	b.Run("write/plain", func(b *testing.B) {
		db, table := openPG(b)
		c := newClient(b)
		cache, err := cacheaside.New[User](cacheaside.NewRedisStore(c), cacheaside.WithPrefix(prefix(b, c)))
		if err != nil {
			b.Fatal(err)
		}
		defer cache.Close()
		ctx := context.Background()
		b.ResetTimer()
		for i := range b.N {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := update(ctx, tx, table, i); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			if err := cache.Invalidate(ctx, keyOf(i%1024)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("write/outbox", func(b *testing.B) {
		db, table := openPG(b)
		c := newClient(b)
		cache, err := cacheaside.New[User](cacheaside.NewRedisStore(c), cacheaside.WithPrefix(prefix(b, c)))
		if err != nil {
			b.Fatal(err)
		}
		defer cache.Close()
		box, err := outbox.New(db, outbox.WithTable(table), outbox.WithCache("users", cache))
		if err != nil {
			b.Fatal(err)
		}
		defer box.Close()
		ctx := context.Background()
		b.ResetTimer()
		for i := range b.N {
			err := box.Do(ctx, nil, func(tx *sql.Tx) error {
				if err := update(ctx, tx, table, i); err != nil {
					return err
				}
				return box.Invalidate(ctx, tx, "users", keyOf(i%1024))
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if s := box.Stats(); s.Deliveries != uint64(b.N) {
			b.Fatalf("%d rows delivered by Do, want %d", s.Deliveries, b.N)
		}
	})
	b.Run("relay", func(b *testing.B) {
		db, table := openPG(b)
		c := newClient(b)
		cache, err := cacheaside.New[User](cacheaside.NewRedisStore(c), cacheaside.WithPrefix(prefix(b, c)))
		if err != nil {
			b.Fatal(err)
		}
		defer cache.Close()
		if _, err := db.Exec(outbox.Schema(table)); err != nil {
			b.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO `+table+` (cache, keys) SELECT 'users', '["k' || g || '"]' FROM generate_series(1, $1) g`, b.N); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		start := time.Now()
		box, err := outbox.New(db, outbox.WithTable(table), outbox.WithCache("users", cache))
		if err != nil {
			b.Fatal(err)
		}
		defer box.Close()
		for box.Stats().Deliveries < uint64(b.N) {
			time.Sleep(time.Millisecond)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "rows/s")
	})
}
