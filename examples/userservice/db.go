package userservice

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite"
)

// database is the source of truth: a users table in PostgreSQL or SQLite, through
// database/sql. The SQL is common to both ($n placeholders, ON CONFLICT, RETURNING).
type database struct {
	db      *sql.DB
	table   string
	kind    string // "PostgreSQL" or "SQLite"
	where   string // host:port/db or "embedded"; never credentials
	tempDir string // the embedded SQLite's directory, removed on close
	latency time.Duration
	writeMu sync.Mutex // SQLite: one writer at a time, instead of SQLITE_BUSY retries
	stats   *counters
}

var tableName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func openDatabase(ctx context.Context, cfg Config, stats *counters) (*database, error) {
	if !tableName.MatchString(cfg.Table) {
		return nil, fmt.Errorf("userservice: table name %q: want lower-case letters, digits and _", cfg.Table)
	}
	d := &database{table: cfg.Table, latency: cfg.DBLatency, stats: stats}
	var err error
	if cfg.DatabaseURL != "" {
		pc, perr := pgx.ParseConfig(cfg.DatabaseURL)
		if perr != nil {
			// The parse error can quote the URL, and the URL can hold a password.
			return nil, errors.New("userservice: DATABASE_URL is not a valid PostgreSQL URL")
		}
		d.kind, d.where = "PostgreSQL", fmt.Sprintf("%s:%d/%s", pc.Host, pc.Port, pc.Database)
		d.db, err = sql.Open("pgx", cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("userservice: open PostgreSQL: %w", err)
		}
		d.db.SetMaxOpenConns(32)
		d.db.SetMaxIdleConns(32)
	} else {
		d.tempDir, err = os.MkdirTemp("", "userservice-sqlite-")
		if err != nil {
			return nil, fmt.Errorf("userservice: embedded SQLite: %w", err)
		}
		d.kind, d.where = "SQLite", "embedded"
		dsn := "file:" + filepath.Join(d.tempDir, "users.db") +
			"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)"
		d.db, err = sql.Open("sqlite", dsn)
		if err != nil {
			os.RemoveAll(d.tempDir)
			return nil, fmt.Errorf("userservice: open SQLite: %w", err)
		}
		d.db.SetMaxOpenConns(8)
		d.db.SetMaxIdleConns(8)
	}
	if err := d.db.PingContext(ctx); err != nil {
		d.close(false)
		return nil, fmt.Errorf("userservice: %s at %s: %w", d.kind, d.where, err)
	}
	_, err = d.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+d.table+` (
		id      BIGINT PRIMARY KEY,
		name    TEXT   NOT NULL,
		email   TEXT   NOT NULL,
		version BIGINT NOT NULL
	)`)
	if err != nil {
		d.close(false)
		return nil, fmt.Errorf("userservice: create table %s: %w", d.table, err)
	}
	return d, nil
}

func (d *database) String() string { return d.kind + " (" + d.where + ")" }

// wait stands for the time a remote, loaded database takes to answer (Config.DBLatency).
func (d *database) wait(ctx context.Context) error {
	if d.latency <= 0 {
		return nil
	}
	t := time.NewTimer(d.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// get reads one user. A missing user is an error wrapping cacheaside.ErrNotFound, which the
// cache stores as a negative entry.
func (d *database) get(ctx context.Context, id int64) (User, error) {
	d.stats.dbQueries.Add(1)
	d.stats.dbLoads.Add(1)
	if err := d.wait(ctx); err != nil {
		return User{}, err
	}
	u := User{ID: id}
	err := d.db.QueryRowContext(ctx, `SELECT name, email, version FROM `+d.table+` WHERE id = $1`, id).
		Scan(&u.Name, &u.Email, &u.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("user %d: %w", id, cacheaside.ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("userservice: read user %d: %w", id, err)
	}
	return u, nil
}

// getMany reads several users in one query; missing ones are absent from the map.
func (d *database) getMany(ctx context.Context, ids []int64) (map[int64]User, error) {
	d.stats.dbQueries.Add(1)
	d.stats.dbLoads.Add(int64(len(ids)))
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	var q strings.Builder
	q.WriteString(`SELECT id, name, email, version FROM ` + d.table + ` WHERE id IN (`)
	args := make([]any, len(ids))
	for i, id := range ids {
		if i > 0 {
			q.WriteByte(',')
		}
		q.WriteString("$" + strconv.Itoa(i+1))
		args[i] = id
	}
	q.WriteByte(')')
	rows, err := d.db.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("userservice: read users: %w", err)
	}
	defer rows.Close()
	out := make(map[int64]User, len(ids))
	for rows.Next() {
		var u User
		if err := rows.Scan(&u.ID, &u.Name, &u.Email, &u.Version); err != nil {
			return nil, fmt.Errorf("userservice: read users: %w", err)
		}
		out[u.ID] = u
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("userservice: read users: %w", err)
	}
	return out, nil
}

// querier is what put and delete run on: the database, or a transaction (the outbox's).
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// put creates or updates a user on q (nil: the database) and returns it with its new version.
func (d *database) put(ctx context.Context, q querier, u User) (User, error) {
	if q == nil {
		q = d.db
	}
	d.stats.dbWrites.Add(1)
	if err := d.wait(ctx); err != nil {
		return User{}, err
	}
	if d.kind == "SQLite" {
		d.writeMu.Lock()
		defer d.writeMu.Unlock()
	}
	err := q.QueryRowContext(ctx, `INSERT INTO `+d.table+` (id, name, email, version) VALUES ($1, $2, $3, 1)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, version = `+d.table+`.version + 1
		RETURNING version`, u.ID, u.Name, u.Email).Scan(&u.Version)
	if err != nil {
		return User{}, fmt.Errorf("userservice: write user %d: %w", u.ID, err)
	}
	return u, nil
}

// delete removes a user on q (nil: the database); a missing one is an error wrapping
// cacheaside.ErrNotFound.
func (d *database) delete(ctx context.Context, q querier, id int64) error {
	if q == nil {
		q = d.db
	}
	d.stats.dbWrites.Add(1)
	if err := d.wait(ctx); err != nil {
		return err
	}
	if d.kind == "SQLite" {
		d.writeMu.Lock()
		defer d.writeMu.Unlock()
	}
	// G202: d.table is the service's configured table name, never request input.
	res, err := q.ExecContext(ctx, `DELETE FROM `+d.table+` WHERE id = $1`, id) //nolint:gosec
	if err != nil {
		return fmt.Errorf("userservice: delete user %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("user %d: %w", id, cacheaside.ErrNotFound)
	}
	return nil
}

// seed writes users in one transaction, in multi-row statements (no simulated latency: it is
// the setup, not the workload).
func (d *database) seed(ctx context.Context, users []User) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("userservice: seed: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // after Commit, a no-op that returns ErrTxDone
	const chunk = 500
	for len(users) > 0 {
		n := min(chunk, len(users))
		var q strings.Builder
		q.WriteString(`INSERT INTO ` + d.table + ` (id, name, email, version) VALUES `)
		args := make([]any, 0, 3*n)
		for i, u := range users[:n] {
			if i > 0 {
				q.WriteByte(',')
			}
			fmt.Fprintf(&q, "($%d, $%d, $%d, 1)", 3*i+1, 3*i+2, 3*i+3)
			args = append(args, u.ID, u.Name, u.Email)
		}
		q.WriteString(` ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, version = ` + d.table + `.version + 1`)
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			return fmt.Errorf("userservice: seed: %w", err)
		}
		users = users[n:]
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("userservice: seed: %w", err)
	}
	return nil
}

// close closes the database; drop drops the table first.
func (d *database) close(drop bool, also ...string) error {
	var errs []error
	if drop {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for _, t := range append([]string{d.table}, also...) {
			_, err := d.db.ExecContext(ctx, `DROP TABLE IF EXISTS `+t)
			errs = append(errs, err)
		}
		cancel()
	}
	errs = append(errs, d.db.Close())
	if d.tempDir != "" {
		errs = append(errs, os.RemoveAll(d.tempDir))
	}
	return errors.Join(errs...)
}
