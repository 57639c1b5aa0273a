package outbox

// The test environment: the real PostgreSQL (CACHEASIDE_PG_DSN, default the local server's
// database test), the real Redis (CACHEASIDE_REDIS_ADDR) and Cluster
// (CACHEASIDE_CLUSTER_ADDRS). Every test uses tables of its own, dropped at cleanup.

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/internal/faultproxy"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
		// database/sql's connection opener lives until the DB is closed; each test closes its own.
		goleak.IgnoreAnyFunction("database/sql.(*DB).connectionOpener"),
	)
}

func inCI() bool { return os.Getenv("CI") == "true" }

func pgDSN() string {
	if d := os.Getenv("CACHEASIDE_PG_DSN"); d != "" {
		return d
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

func redisAddr() string {
	if a := os.Getenv("CACHEASIDE_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

func clusterAddrs() []string {
	if a := os.Getenv("CACHEASIDE_CLUSTER_ADDRS"); a != "" {
		return strings.Split(a, ",")
	}
	return []string{"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}
}

// needServer skips (fails in CI) when nothing answers at addr.
func needServer(t testing.TB, what, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
		return
	}
	if inCI() {
		t.Fatalf("%s at %s is not answering (%v); CI must run this test", what, addr, err)
	}
	t.Skipf("%s at %s is not answering: %v", what, addr, err)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// openDB opens the test database, closed at cleanup.
func openDB(t testing.TB) *sql.DB {
	t.Helper()
	needServer(t, "PostgreSQL", "127.0.0.1:5432")
	db, err := sql.Open("pgx", pgDSN())
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(20)
	t.Cleanup(func() { db.Close() })
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db
}

// testTable returns a table name of this test's own; the table (if created) and a data table
// of the same name plus "_data" are dropped at cleanup.
func testTable(t testing.TB, db *sql.DB) string {
	t.Helper()
	name := "cacheaside_outbox_test_" + randHex(6)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = db.ExecContext(ctx, `DROP TABLE IF EXISTS `+name)
		_, _ = db.ExecContext(ctx, `DROP TABLE IF EXISTS `+name+`_data`)
	})
	return name
}

// truth is the source of truth: a table of versions, key -> v.
type truth struct {
	db    *sql.DB
	table string
}

func newTruth(t testing.TB, db *sql.DB, table string) *truth {
	t.Helper()
	tr := &truth{db: db, table: table + "_data"}
	if _, err := db.Exec(`CREATE TABLE ` + tr.table + ` (k text PRIMARY KEY, v bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return tr
}

// bump writes the next version of key in tx and returns it.
func (tr *truth) bump(ctx context.Context, tx *sql.Tx, key string) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, `INSERT INTO `+tr.table+` (k, v) VALUES ($1, 1)
		ON CONFLICT (k) DO UPDATE SET v = `+tr.table+`.v + 1 RETURNING v`, key).Scan(&v)
	return v, err
}

func (tr *truth) read(ctx context.Context, key string) (int64, error) {
	var v int64
	err := tr.db.QueryRowContext(ctx, `SELECT v FROM `+tr.table+` WHERE k = $1`, key).Scan(&v)
	if err == sql.ErrNoRows {
		return 0, nil
	}
	return v, err
}

func (tr *truth) loader(key string) func(context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) { return tr.read(ctx, key) }
}

// redisTarget builds caches on the standalone Redis or the Cluster, each on a client of its
// own (another process, in effect), optionally through a fault proxy per server.
type redisTarget struct {
	name    string
	addrs   []string
	cluster bool
	proxies map[string]*faultproxy.Proxy
}

func newRedisTarget(t testing.TB, kind string, proxied bool) *redisTarget {
	t.Helper()
	tg := &redisTarget{name: kind}
	switch kind {
	case "redis":
		tg.addrs = []string{redisAddr()}
	case "cluster":
		tg.addrs, tg.cluster = clusterAddrs(), true
	default:
		t.Fatalf("unknown target %q", kind)
	}
	needServer(t, kind, tg.addrs[0])
	if proxied {
		tg.proxies = make(map[string]*faultproxy.Proxy)
		for _, a := range tg.addrs {
			p, err := faultproxy.New(a)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			tg.proxies[a] = p
		}
	}
	return tg
}

func (tg *redisTarget) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if p := tg.proxies[addr]; p != nil {
		addr = p.Addr()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// blackhole holds all traffic to every server (on) or lets it flow again.
func (tg *redisTarget) blackhole(on bool) {
	for _, p := range tg.proxies {
		if !on {
			p.DropAll() // first: what the outage held is lost, not delivered late
		}
		p.Blackhole(on)
	}
}

func (tg *redisTarget) client(t testing.TB) redis.UniversalClient {
	t.Helper()
	var c redis.UniversalClient
	if tg.cluster {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: tg.addrs, Dialer: tg.dial})
	} else {
		c = redis.NewClient(&redis.Options{Addr: tg.addrs[0], Dialer: tg.dial})
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// cache returns a Cache[int64] with prefix on a client of its own.
func (tg *redisTarget) cache(t testing.TB, prefix string, opts ...cacheaside.Option) *cacheaside.Cache[int64] {
	t.Helper()
	c, err := cacheaside.New[int64](cacheaside.NewRedisStore(tg.client(t)), append([]cacheaside.Option{cacheaside.WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// faultOpts make a cache fail open fast when its store is cut.
var faultOpts = []cacheaside.Option{
	cacheaside.WithStoreTimeout(100 * time.Millisecond),
	cacheaside.WithConnectTimeout(time.Second),
	cacheaside.WithLoadTimeout(time.Second),
	cacheaside.WithCircuitBreaker(3, 20*time.Millisecond),
}

func testPrefix() string { return "cacheaside-outbox-test:" + randHex(6) + ":" }

// newBox returns an Outbox closed at cleanup.
func newBox(t testing.TB, db *sql.DB, opts ...Option) *Outbox {
	t.Helper()
	b, err := New(db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// waitFor polls cond every 20ms until it holds, failing the test after limit (a hang guard,
// not a timing assertion).
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rowCount counts the table's rows: pending and parked.
func rowCount(t testing.TB, db *sql.DB, table string) (pending, parked int) {
	t.Helper()
	err := db.QueryRow(`SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL) FROM `+table).Scan(&pending, &parked)
	if err != nil {
		t.Fatal(err)
	}
	return pending, parked
}

// noRelay and noDeliver are test knobs: an outbox that runs no relay, and whose Do does not
// deliver after its commit (a process that dies right after committing).
func noRelay() Option   { return func(c *config) { c.noRelay = true } }
func noDeliver() Option { return func(c *config) { c.noDeliver = true } }

// A Cache is an Invalidator.
var _ Invalidator = (*cacheaside.Cache[int64])(nil)
