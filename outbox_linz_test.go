package cacheaside

// The linearizability check with the transactional outbox (package outbox) under a Redis
// outage: writers commit a new version to PostgreSQL and its invalidation to the outbox in
// one transaction (Outbox.Do); each instance (a Cache on a client of its own) runs an Outbox
// of its own, as each process would; a blackhole cuts every connection to Redis for part of
// each round. A write counts as returned when its own outbox row was delivered (by its Do, or
// by a relay after the outage; each write names its key with its own id, which the
// Invalidator strips, so deliveries are known per row, and a row is delivered only after its
// commit). So no write is dropped as failed, and no read is dropped after one: the guarantee
// "a read that starts after the delivery never sees the old value" is checked on every read.
// At rest, once the outbox table is empty,
// every instance must serve the database's version of every key.
//
// The broken build: an outbox whose deliveries delete rows without invalidating must be
// caught: reads after the (pretended) delivery see the old value.
//
// The tags variant (outbox-tags-outage): every read tags its entry "t:"+key, and every write
// names that tag in the outbox (Outbox.InvalidateTags) instead of the key; delivery goes
// through Cache.InvalidateTags. The same checks hold, and the same broken build is caught.

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/outbox"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

func pgDSN() string {
	if d := os.Getenv("CACHEASIDE_PG_DSN"); d != "" {
		return d
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// deliveryLog records when each write's outbox row was delivered. A write names its key as
// key#id in the outbox (id: the write's number), and the Invalidator strips the suffix: so
// each successful delivery is known per row, whether Do or a relay made it, and a row is
// delivered only after its commit.
type deliveryLog struct {
	h    *linzHistory
	drop bool // the broken build: deliveries do nothing (rows deleted undelivered)
	mu   sync.Mutex
	done map[int64]int64 // write id -> end of its row's first successful delivery
}

type loggedInvalidator struct {
	c   *Cache[linzValue]
	log *deliveryLog
}

func (l loggedInvalidator) Invalidate(ctx context.Context, named ...string) error {
	return l.deliver(ctx, named, l.c.Invalidate)
}

// InvalidateTags delivers tags named tag#id, as Invalidate does keys.
func (l loggedInvalidator) InvalidateTags(ctx context.Context, named ...string) error {
	return l.deliver(ctx, named, l.c.InvalidateTags)
}

func (l loggedInvalidator) deliver(ctx context.Context, named []string, inv func(context.Context, ...string) error) error {
	keys := make([]string, len(named))
	ids := make([]int64, len(named))
	for i, n := range named {
		k, id, ok := strings.Cut(n, "#")
		if !ok {
			return fmt.Errorf("outbox key or tag %q without a write id", n)
		}
		keys[i] = k
		ids[i], _ = strconv.ParseInt(id, 10, 64)
	}
	if !l.log.drop {
		if err := inv(ctx, keys...); err != nil {
			return err
		}
	}
	end := l.log.h.now()
	l.log.mu.Lock()
	defer l.log.mu.Unlock()
	for _, id := range ids {
		if _, ok := l.log.done[id]; !ok {
			l.log.done[id] = end
		}
	}
	return nil
}

// returned is when write id counts as returned: the end of its row's delivery.
func (l *deliveryLog) returned(id int64) (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	end, ok := l.done[id]
	return end, ok
}

// TestLinearizabilityOutbox runs the outbox scenario, with keys and with tags, on the
// standalone Redis and the Cluster, and the broken builds on the standalone Redis.
func TestLinearizabilityOutbox(t *testing.T) {
	scale := linzScale(t)
	for _, tags := range []bool{false, true} {
		name := "outbox-outage"
		if tags {
			name = "outbox-tags-outage"
		}
		for _, store := range redisStores {
			t.Run(name+"/"+store, func(t *testing.T) {
				res, stale, note := runOutboxLinz(t, store, scale, tags, false)
				sc := linzScenario{name: name, strict: true}
				report := linzLine(sc, store, res, fmt.Sprintf("stale-at-rest=%d; %s", stale, note))
				t.Log(report)
				linzSummary(report)
				if res.violations > 0 || res.unknown > 0 || stale > 0 {
					t.Errorf("%s\nvisualization of the first violation: %s", report, res.viz)
				}
				if res.reads == 0 {
					t.Errorf("no read was checked: %s", report)
				}
			})
		}
		broken := "broken-outbox-delivery"
		if tags {
			broken = "broken-outbox-tags-delivery"
		}
		t.Run(broken+"/"+storeRedis, func(t *testing.T) {
			res, stale, note := runOutboxLinz(t, storeRedis, 1, tags, true)
			sc := linzScenario{name: broken, strict: true}
			report := linzLine(sc, storeRedis, res, fmt.Sprintf("stale-at-rest=%d; %s", stale, note))
			t.Log(report)
			linzSummary(report)
			if res.violations == 0 {
				t.Errorf("the checker missed an outbox that drops rows: %s", report)
			}
		})
	}
}

// runOutboxLinz runs the outbox scenario's rounds on store and checks them; it returns the
// result, the reads at rest that did not return the database's version, and a note.
func runOutboxLinz(t *testing.T, store string, scale int, tags, broken bool) (linzResult, int, string) {
	needServer(t, "PostgreSQL", "127.0.0.1:5432")
	db, err := sql.Open("pgx", pgDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var b [6]byte
	_, _ = crand.Read(b[:])
	table := "cacheaside_outbox_linz_" + hex.EncodeToString(b[:])
	data := table + "_data"
	t.Cleanup(func() {
		_, _ = db.Exec(`DROP TABLE IF EXISTS ` + table)
		_, _ = db.Exec(`DROP TABLE IF EXISTS ` + data)
	})
	if _, err := db.Exec(`CREATE TABLE ` + data + ` (k text PRIMARY KEY, v bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	tg := newLinzTarget(t, store, true)
	const instances = 3
	prefix := testPrefix(t)
	caches := make([]*Cache[linzValue], instances)
	for i := range caches {
		caches[i] = newTestCache[linzValue](t, tg.newStore(t), concat([]Option{WithPrefix(prefix)}, faultOpts)...)
	}
	var res linzResult
	staleAtRest := 0
	var notes []string
	for r := range scale {
		h, stale, note := outboxLinzRound(t, tg, db, table, data, caches, fmt.Sprintf("r%d:", r), tags, broken)
		staleAtRest += stale
		notes = append(notes, note)
		res.merge(h.check(linzCheck{label: "outbox-outage/" + store, strict: true}))
	}
	return res, staleAtRest, notes[len(notes)-1]
}

func outboxLinzRound(t *testing.T, tg *linzTarget, db *sql.DB, table, data string, caches []*Cache[linzValue], keyPrefix string, tags, broken bool) (*linzHistory, int, string) {
	const nkeys, readers, writers, writes = 3, 6, 2, 25
	const writeGap, readGap, loadDelay = 40 * time.Millisecond, time.Millisecond, 4 * time.Millisecond
	h := newLinzHistory()
	log := &deliveryLog{h: h, drop: broken, done: make(map[int64]int64)}
	boxes := make([]*outbox.Outbox, len(caches))
	for i, c := range caches {
		box, err := outbox.New(db, outbox.WithTable(table), outbox.WithCache("linz", loggedInvalidator{c, log}),
			outbox.WithPollInterval(20*time.Millisecond), outbox.WithRetryBackoff(20*time.Millisecond, 200*time.Millisecond),
			outbox.WithLogger(nil))
		if err != nil {
			t.Fatal(err)
		}
		boxes[i] = box
	}
	defer func() {
		for _, b := range boxes {
			b.Close()
		}
	}()
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = keyPrefix + strconv.Itoa(i)
	}
	readTruth := func(ctx context.Context, key string) (uint64, error) {
		var v uint64
		err := db.QueryRowContext(ctx, `SELECT v FROM `+data+` WHERE k = $1`, key).Scan(&v)
		if err == sql.ErrNoRows {
			return 0, nil
		}
		return v, err
	}
	loader := func(key string) func(context.Context) (linzValue, error) {
		return func(ctx context.Context) (linzValue, error) {
			v, err := readTruth(ctx, key)
			if err != nil {
				return linzValue{}, err
			}
			if !sleepCtx(ctx, rand.N(loadDelay)) {
				return linzValue{}, ctx.Err()
			}
			return linzValue{Key: key, Version: v}, nil
		}
	}
	read := func(client int, c *Cache[linzValue], key string) (uint64, bool) {
		before := markOf(c)
		call := h.now()
		var opts []CallOption
		if tags {
			opts = append(opts, Tags("t:"+key))
		}
		v, err := c.GetOrLoad(context.Background(), key, loader(key), opts...)
		unstored := before.unstored(markOf(c))
		if err != nil {
			h.readErrs.Add(1)
			return 0, false
		}
		ver := v.Version
		if v.Key != key {
			ver = badVersion
		}
		h.add(key, linzOp{client: client, version: ver, call: call, ret: h.now(), unstored: unstored})
		return ver, true
	}
	type pendingWrite struct {
		id          int64
		client      int
		key         string
		version     uint64
		call, doRet int64
	}
	var wmu sync.Mutex
	var pws []pendingWrite
	var nextID int64
	write := func(client int, box *outbox.Outbox, key string) {
		wmu.Lock()
		nextID++
		id := nextID
		wmu.Unlock()
		ctx := context.Background()
		call := h.now()
		var v uint64
		err := box.Do(ctx, nil, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, `INSERT INTO `+data+` (k, v) VALUES ($1, 1)
				ON CONFLICT (k) DO UPDATE SET v = `+data+`.v + 1 RETURNING v`, key).Scan(&v); err != nil {
				return err
			}
			if tags {
				return box.InvalidateTags(ctx, tx, "linz", "t:"+key+"#"+strconv.FormatInt(id, 10))
			}
			return box.Invalidate(ctx, tx, "linz", key+"#"+strconv.FormatInt(id, 10))
		})
		if err != nil {
			t.Errorf("write %s: %v", key, err)
			return
		}
		wmu.Lock()
		pws = append(pws, pendingWrite{id: id, client: client, key: key, version: v, call: call, doRet: h.now()})
		wmu.Unlock()
	}

	// The fault: a blackhole on every server for 600-900ms, 150ms into the round.
	faultDone := make(chan time.Duration, 1)
	go func() {
		time.Sleep(150 * time.Millisecond)
		d := between(600*time.Millisecond, 900*time.Millisecond)
		for _, p := range tg.proxies {
			p.Blackhole(true)
		}
		time.Sleep(d)
		for _, p := range tg.proxies {
			p.DropAll() // first: what the outage held is lost, not delivered late
			p.Blackhole(false)
		}
		faultDone <- d
	}()
	var writing, reading sync.WaitGroup
	stop := make(chan struct{})
	for i := range writers {
		writing.Add(1)
		go func() {
			defer writing.Done()
			for range writes {
				time.Sleep(rand.N(writeGap + 1))
				write(i, boxes[i%len(boxes)], keys[rand.N(len(keys))])
			}
		}()
	}
	for i := range readers {
		reading.Add(1)
		go func() {
			defer reading.Done()
			c := caches[i%len(caches)]
			for {
				select {
				case <-stop:
					return
				default:
				}
				read(writers+i, c, keys[rand.N(len(keys))])
				time.Sleep(rand.N(readGap + 1))
			}
		}()
	}
	writing.Wait()
	close(stop)
	reading.Wait()
	outage := <-faultDone

	// At rest: every row delivered (the table empty), then every instance reads every key.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d outbox rows still pending 60s after the outage", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	viaRelay := 0
	for _, w := range pws {
		ret, ok := log.returned(w.id)
		if !ok {
			t.Fatalf("write v%d of %s: its outbox row is gone, never delivered", w.version, w.key)
		}
		if ret > w.doRet {
			viaRelay++ // delivered after Do returned: by a relay
		}
		h.add(w.key, linzOp{client: w.client, write: true, version: w.version, call: w.call, ret: ret})
	}
	stale := 0
	for i, c := range caches {
		for _, k := range keys {
			want, err := readTruth(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			if got, ok := read(writers+readers+i, c, k); !ok || got != want {
				stale++
			}
		}
	}
	var retries uint64
	for _, b := range boxes {
		retries += b.Stats().Retries
	}
	return h, stale, fmt.Sprintf("outage %v, %d writes, %d delivered by a relay after Do, %d retried deliveries",
		outage.Round(time.Millisecond), len(pws), viaRelay, retries)
}
