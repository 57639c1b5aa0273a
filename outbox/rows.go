package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Statements returns the statements Invalidate runs in a transaction of your own (not Do's),
// with their arguments, for a transaction of another API than database/sql (package pgxoutbox
// runs them on a pgx.Tx): an INSERT of the row, due at once, and, with WithNotify, the
// NOTIFY. It returns the errors Invalidate returns for bad input.
func (b *Outbox) Statements(cache string, keys ...string) ([]Statement, error) {
	payload, err := b.encode(cache, keys)
	if err != nil {
		return nil, err
	}
	return b.statements(cache, payload), nil
}

// TagStatements is Statements for InvalidateTags: the statements that write a row naming tags
// of cache, for a transaction of another API than database/sql (pgxoutbox.InvalidateTags). It
// returns the errors InvalidateTags returns for bad input.
func (b *Outbox) TagStatements(cache string, tags ...string) ([]Statement, error) {
	payload, err := b.encodeTags(cache, tags)
	if err != nil {
		return nil, err
	}
	return b.statements(cache, payload), nil
}

func (b *Outbox) statements(cache string, payload []byte) []Statement {
	out := []Statement{{SQL: b.q.insert, Args: []any{cache, string(payload), 0.0}}}
	if b.cfg.notify {
		out = append(out, Statement{SQL: b.q.notify})
	}
	return out
}

// encode checks Invalidate's input and returns the row's keys column: a JSON array of keys,
// the format of every release.
func (b *Outbox) encode(cache string, keys []string) ([]byte, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if len(keys) == 0 || slices.Contains(keys, "") {
		return nil, ErrNoKeys
	}
	if b.cfg.caches[cache] == nil {
		return nil, fmt.Errorf("%w %q: register it with WithCache", ErrUnknownCache, cache)
	}
	payload, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("cacheaside: outbox: encoding keys: %w", err)
	}
	return payload, nil
}

// tagPayload is a tag row's keys column: a JSON object, so that a release that knows only key
// rows (a JSON array) fails to decode it and parks it rather than delivering tags as keys.
type tagPayload struct {
	Tags []string `json:"tags"`
}

// encodeTags checks InvalidateTags' input and returns the row's keys column.
func (b *Outbox) encodeTags(cache string, tags []string) ([]byte, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if len(tags) == 0 || slices.Contains(tags, "") {
		return nil, ErrNoTags
	}
	inv := b.cfg.caches[cache]
	if inv == nil {
		return nil, fmt.Errorf("%w %q: register it with WithCache", ErrUnknownCache, cache)
	}
	if _, ok := inv.(TagInvalidator); !ok {
		return nil, fmt.Errorf("%w: cache %q: %T has no InvalidateTags method", ErrTagsUnsupported, cache, inv)
	}
	if s, ok := inv.(interface{ SupportsTags() bool }); ok && !s.SupportsTags() {
		return nil, fmt.Errorf("%w: cache %q: its store indexes no tags", ErrTagsUnsupported, cache)
	}
	payload, err := json.Marshal(tagPayload{Tags: tags})
	if err != nil {
		return nil, fmt.Errorf("cacheaside: outbox: encoding tags: %w", err)
	}
	return payload, nil
}

// decode reads a row's keys column: a JSON array of keys, or an object {"tags": [...]}. A
// row of neither form (or of a form a later release added), or with no key or tag or an empty
// one, is an error: the row is parked.
func decode(col string) (keys, tags []string, err error) {
	if s := strings.TrimLeft(col, " \t\r\n"); s != "" && s[0] == '{' {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		var p tagPayload
		if err := dec.Decode(&p); err != nil {
			return nil, nil, err
		}
		if dec.More() {
			return nil, nil, errors.New("trailing data after the tags")
		}
		if len(p.Tags) == 0 || slices.Contains(p.Tags, "") {
			return nil, nil, errors.New("no tags, or an empty tag")
		}
		return nil, p.Tags, nil
	}
	if err := json.Unmarshal([]byte(col), &keys); err != nil {
		return nil, nil, err
	}
	if len(keys) == 0 || slices.Contains(keys, "") {
		return nil, nil, errors.New("no keys, or an empty key")
	}
	return keys, nil, nil
}

// Statement is one SQL statement and its arguments ($1, $2, ... placeholders).
type Statement struct {
	SQL  string
	Args []any
}

// row is an outbox row claimed for delivery.
type row struct {
	id       int64
	cache    string
	keys     string
	attempts int
}

// queries are the outbox's SQL statements for one table and set of caches.
type queries struct {
	insert, insertReturning string
	notify                  string
	claim, del, retry, park string
	stats                   string
	nCaches                 int
}

func newQueries(t string, caches []string) queries {
	ph := make([]string, len(caches))
	for i := range caches {
		ph[i] = "$" + strconv.Itoa(i+3)
	}
	return queries{
		// clock_timestamp, not now() (the transaction's start): a claim counts from the insert.
		insert:          `INSERT INTO ` + t + ` (cache, keys, next_attempt_at) VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))`,
		notify:          `SELECT pg_notify('` + t + `', '')`,
		insertReturning: `INSERT INTO ` + t + ` (cache, keys, next_attempt_at) VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) RETURNING id`,
		// Claim due rows of this process's caches: push their next attempt one lease away, so
		// that no other relay takes them while this one delivers.
		claim: `UPDATE ` + t + ` SET next_attempt_at = now() + make_interval(secs => $1), attempts = attempts + 1
WHERE id IN (SELECT id FROM ` + t + ` WHERE parked_at IS NULL AND next_attempt_at <= now() AND cache IN (` + strings.Join(ph, ", ") + `)
	ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING id, cache, keys, attempts`,
		del: `DELETE FROM ` + t + ` WHERE id = ANY($1::bigint[])`,
		retry: `UPDATE ` + t + ` SET last_error = $1,
	next_attempt_at = now() + make_interval(secs => least($3::float8, $2::float8 * power(2, least(greatest(attempts, 1), 30) - 1)) * (0.75 + random() / 4))
WHERE id = ANY($4::bigint[])`,
		park: `UPDATE ` + t + ` SET parked_at = now(), last_error = $1 WHERE id = $2`,
		stats: `SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL),
	COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL)), 0)::float8 FROM ` + t,
		nCaches: len(caches),
	}
}

// idArray renders ids as a PostgreSQL array literal, a text parameter every driver sends.
func idArray(ids []int64) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for i, id := range ids {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatInt(id, 10))
	}
	sb.WriteByte('}')
	return sb.String()
}
