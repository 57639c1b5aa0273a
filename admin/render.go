package admin

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/cacheaside/cacheaside"
)

// maxValueBytes is how much of a value the key page shows.
const maxValueBytes = 64 << 10

type page struct {
	Title string
}

func (h *Handler) newPage(title string) page { return page{Title: title} }

type row struct {
	Label, Value, Help string
	Warn               bool
}

type cacheView struct {
	Name  string
	Info  cacheaside.CacheInfo
	Stats cacheaside.Stats
	Rows  []row
	Tags  bool
}

type indexPage struct {
	page
	Caches []cacheView
}

type keyPage struct {
	page
	Cache, Key string
	Info       cacheaside.KeyInfo
	Rows       []row
	ShowValues bool
	HasValue   bool
	Value      string
	Error      string
}

type confirmPage struct {
	page
	Inv   invalidation
	Token string
}

type resultPage struct {
	page
	Inv            invalidation
	Message, Error string
}

type errorPage struct {
	page
	Status  int
	Message string
}

func (h *Handler) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, data); err != nil {
		// A template bug: say so without echoing anything of the request.
		http.Error(w, "cacheaside admin: the page failed to render", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

func count(n uint64) string { return strconv.FormatUint(n, 10) }

func statRows(s cacheaside.Stats) []row {
	return []row{
		{"Requests", count(s.Requests()), "GetOrLoad calls plus distinct keys of GetOrLoadMany calls", false},
		{"Hit ratio", fmt.Sprintf("%.1f%%", 100*s.HitRatio()), "answered without waiting for a load", false},
		{"Hits", count(s.Hits), "values from the store", false},
		{"L1 hits", count(s.L1Hits), "values from the local cache", false},
		{"Negative hits", count(s.NegativeHits), "cached not-founds", false},
		{"Stale", count(s.Stale), "values past their TTL, served while refreshed or for a failed load", false},
		{"Misses", count(s.Misses), "answered by a load", false},
		{"Loads", count(s.Loads), "loader calls", false},
		{"Load errors", count(s.LoadErrors), "loader calls that failed", s.LoadErrors > 0},
		{"Load panics", count(s.LoadPanics), "loader calls that panicked", s.LoadPanics > 0},
		{"Mean load time", dur(s.MeanLoadTime()), "", false},
		{"Store errors", count(s.StoreErrors), "store operations that failed or timed out", s.StoreErrors > 0},
		{"Lease waits", count(s.LeaseWaits), "waits for another process's load", false},
		{"Coalesced", count(s.Coalesced), "calls that shared work in this process", false},
		{"Early refreshes", count(s.EarlyRefreshes), "", false},
		{"Invalidated keys", count(s.Invalidations), "keys passed to Invalidate", false},
		{"Invalidated patterns", count(s.PatternInvalidations), "InvalidatePattern calls", false},
		{"Invalidated tags", count(s.TagInvalidations), "tags passed to InvalidateTags", false},
		{"Undecodable", count(s.UndecodableValues), "stored entries read as misses", s.UndecodableValues > 0},
		{"L1 flushes", count(s.L1Flushes), "", false},
		{"Breaker opens", count(s.BreakerOpens), "times the store was skipped after failures", s.BreakerOpens > 0},
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.String()
	}
}

func keyRows(k cacheaside.KeyInfo) []row {
	hit := "no: a read would load it"
	switch {
	case k.L1:
		hit = "yes, from this instance's local cache"
	case k.Fresh && k.NotFound:
		hit = "yes: a cached not-found"
	case k.Fresh:
		hit = "yes"
	case k.Stale:
		hit = "yes, stale: served while it is refreshed"
	case k.Value && !k.Decoded:
		hit = "no: the stored value does not decode, a read replaces it"
	case k.Lease:
		hit = "no: a load is under way"
	}
	rows := []row{
		{"Hit", hit, "", false},
		{"Store key", k.StoreKey, "prefix + key", false},
		{"Stored value", yesNo(k.Value), "", false},
	}
	if k.Value {
		rows = append(rows, row{"Size", fmt.Sprintf("%d bytes", k.Size), "as stored: envelope, compression and encryption included", false})
	}
	if k.Present {
		ttl := dur(k.TTL)
		if k.TTL < 0 {
			ttl = "none (the key has no expiry)"
		}
		rows = append(rows, row{"Remaining TTL", ttl, "until the store drops the key (stale windows included)", false})
	}
	lease := "no"
	if k.Lease {
		lease = "yes, " + dur(k.LeaseTTL) + " left"
	}
	rows = append(rows, row{"Lease held", lease, "a load or refresh of the key is under way", false})
	if k.Decoded {
		left := time.Until(k.Expiry)
		exp := "in " + dur(left.Round(time.Millisecond))
		if left <= 0 {
			exp = dur((-left).Round(time.Millisecond)) + " ago"
		}
		rows = append(rows,
			row{"Not-found", yesNo(k.NotFound), "the loader said the record does not exist", false},
			row{"Logical expiry", exp, "the value's TTL, before any stale window", false},
			row{"Load time", dur(k.LoadTime), "of the load that produced the value", false},
			row{"Compressed", yesNo(k.Compressed), "", false},
			row{"Encrypted", yesNo(k.Encrypted), "", false},
		)
	}
	if k.Undecodable != "" {
		rows = append(rows, row{"Undecodable", k.Undecodable, "", true})
	}
	if k.Foreign {
		rows = append(rows, row{"Foreign data", "yes: the key holds data that is not a cache entry; a read deletes it", "", true})
	}
	rows = append(rows,
		row{"Codec", k.Codec, "", false},
		row{"In local cache", yesNo(k.L1), "this instance's L1", false},
	)
	return rows
}

// renderValue shows a decoded value: text as it is, other bytes in hex, anything else as
// indented JSON when it marshals, else with %+v. At most maxValueBytes of it.
func renderValue(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		if utf8.Valid(x) {
			s = string(x)
		} else {
			s = hex.Dump(x[:min(len(x), maxValueBytes/4)])
		}
	default:
		if b, err := json.MarshalIndent(v, "", "  "); err == nil {
			s = string(b)
		} else {
			s = fmt.Sprintf("%+v", v)
		}
	}
	if len(s) > maxValueBytes {
		s = s[:maxValueBytes] + "\n… (truncated)"
	}
	return s
}

var pages = template.Must(template.New("pages").Parse(pageTemplates))

const pageTemplates = `
{{define "head"}}<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{.Title}} · cacheaside</title>
<style>
  :root { --fg: #1d232a; --muted: #5c6670; --line: #d9dee3; --bg: #f6f7f9; --card: #fff;
          --accent: #1f5fae; --ok: #1b7f3b; --bad: #b42318; --warn: #9a6700; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { background: #16202b; color: #fff; padding: 12px 24px; display: flex; align-items: baseline; gap: 16px; }
  header a { color: #fff; text-decoration: none; font-weight: 600; }
  header span { color: #aab4bf; }
  main { padding: 20px 24px; max-width: 1200px; }
  h1 { font-size: 20px; margin: 0 0 16px; }
  h2 { font-size: 17px; margin: 0; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; margin-bottom: 16px; }
  .cardhead { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; margin-bottom: 6px; }
  .meta { color: var(--muted); font-size: 13px; margin-bottom: 10px; }
  .meta code { color: var(--fg); }
  .badge { font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 10px; }
  .closed { background: #e3f4e8; color: var(--ok); }
  .open { background: #fde7e5; color: var(--bad); }
  .stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(122px, 1fr)); gap: 6px; margin: 0 0 12px; }
  .stat { border: 1px solid var(--line); border-radius: 6px; padding: 4px 8px; }
  .stat dt { font-size: 12px; color: var(--muted); }
  .stat dd { margin: 0; font-size: 16px; font-variant-numeric: tabular-nums; }
  .stat.warn dd { color: var(--warn); font-weight: 600; }
  .forms { display: flex; gap: 8px; flex-wrap: wrap; }
  form.inline { display: flex; gap: 6px; align-items: center; border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; background: var(--bg); }
  form.inline label { font-size: 13px; color: var(--muted); }
  input[type=text] { font: 14px ui-monospace, "DejaVu Sans Mono", monospace; padding: 4px 6px; border: 1px solid #b8c0c8; border-radius: 4px; width: 10em; }
  button { font: inherit; font-size: 14px; padding: 4px 12px; border-radius: 4px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; }
  button.danger { border-color: var(--bad); background: var(--bad); }
  a.button { display: inline-block; padding: 4px 12px; border: 1px solid var(--line); border-radius: 4px; color: var(--fg); text-decoration: none; background: #fff; }
  .na { font-size: 13px; color: var(--muted); align-self: center; }
  table.kv { border-collapse: collapse; width: 100%; }
  table.kv th, table.kv td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
  table.kv th { width: 180px; font-weight: 600; }
  table.kv td.help { color: var(--muted); font-size: 13px; }
  tr.warn td { color: var(--warn); font-weight: 600; }
  code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
  pre { background: #0f1720; color: #e6edf3; padding: 12px; border-radius: 6px; overflow: auto; max-height: 480px; white-space: pre-wrap; word-break: break-all; }
  .error { background: #fde7e5; color: var(--bad); border: 1px solid #f4b8b2; padding: 10px 14px; border-radius: 6px; }
  .success { background: #e3f4e8; color: var(--ok); border: 1px solid #b5dfc2; padding: 10px 14px; border-radius: 6px; }
  .muted { color: var(--muted); }
  .target { font-family: ui-monospace, "DejaVu Sans Mono", monospace; background: var(--bg); padding: 2px 6px; border-radius: 4px; word-break: break-all; }
</style>
</head>
<body>
<header><a href="./">cacheaside</a><span>operator page</span></header>
<main>
<h1>{{.Title}}</h1>
{{end}}

{{define "foot"}}</main>
</body>
</html>
{{end}}

{{define "index"}}{{template "head" .}}
{{if not .Caches}}<p class="muted">No cache is registered: call Register on the handler.</p>{{end}}
{{range .Caches}}
<section class="card">
  <div class="cardhead">
    <h2>{{.Name}}</h2>
    {{if .Stats.BreakerOpen}}<span class="badge open">breaker open: store skipped</span>{{else}}<span class="badge closed">breaker closed</span>{{end}}
  </div>
  <div class="meta">
    prefix <code>{{.Info.Prefix}}</code> · type <code>{{.Info.Type}}</code> · codec <code>{{.Info.Codec}}</code> ·
    store <code>{{.Info.Store}}</code> · TTL {{.Info.TTL}} · negative TTL {{.Info.NegativeTTL}}
    {{- if .Info.LocalCache}} · local cache {{.Info.LocalCache}} entries{{end}}
    {{- if .Info.Encrypted}} · encrypted{{end}}
  </div>
  <dl class="stats">
    {{range .Rows}}<div class="stat{{if .Warn}} warn{{end}}"{{if .Help}} title="{{.Help}}"{{end}}><dt>{{.Label}}</dt><dd>{{.Value}}</dd></div>
    {{end}}
  </dl>
  <div class="forms">
    <form class="inline" method="get" action="key">
      <input type="hidden" name="cache" value="{{.Name}}">
      <label>Key <input type="text" name="key" required></label>
      <button type="submit">Look up</button>
    </form>
    <form class="inline" method="get" action="invalidate">
      <input type="hidden" name="cache" value="{{.Name}}"><input type="hidden" name="kind" value="key">
      <label>Key <input type="text" name="target" required></label>
      <button type="submit" class="danger">Invalidate…</button>
    </form>
    <form class="inline" method="get" action="invalidate">
      <input type="hidden" name="cache" value="{{.Name}}"><input type="hidden" name="kind" value="pattern">
      <label>Pattern <input type="text" name="target" placeholder="user:*" required></label>
      <button type="submit" class="danger">Invalidate…</button>
    </form>
    {{if .Tags}}
    <form class="inline" method="get" action="invalidate">
      <input type="hidden" name="cache" value="{{.Name}}"><input type="hidden" name="kind" value="tags">
      <label>Tags <input type="text" name="target" placeholder="a, b" required></label>
      <button type="submit" class="danger">Invalidate…</button>
    </form>
    {{else}}<span class="na">tags: not supported by this cache</span>{{end}}
  </div>
</section>
{{end}}
{{template "foot" .}}{{end}}

{{define "key"}}{{template "head" .}}
<section class="card">
  <div class="cardhead"><h2><span class="target">{{.Key}}</span> in {{.Cache}}</h2></div>
  {{if .Error}}<p class="error">{{.Error}}</p>{{else}}
  <table class="kv">
    {{range .Rows}}<tr{{if .Warn}} class="warn"{{end}}><th>{{.Label}}</th><td>{{.Value}}</td><td class="help">{{.Help}}</td></tr>
    {{end}}
    <tr><th>Value</th><td colspan="2">{{if not .ShowValues}}<span class="muted">hidden (the handler was built without admin.WithValues(true))</span>{{else if .HasValue}}<pre>{{.Value}}</pre>{{else}}<span class="muted">none</span>{{end}}</td></tr>
  </table>
  {{end}}
  <p class="forms">
    <a class="button" href="./">Back</a>
    <a class="button" href="key?cache={{.Cache}}&amp;key={{.Key}}">Reload</a>
    <a class="button" href="invalidate?cache={{.Cache}}&amp;kind=key&amp;target={{.Key}}">Invalidate…</a>
  </p>
</section>
{{template "foot" .}}{{end}}

{{define "what"}}{{if eq .Kind "key"}}the key{{else if eq .Kind "pattern"}}every key matching the pattern{{else}}every entry tagged{{end}} <span class="target">{{.Target}}</span> in cache <b>{{.Cache}}</b>{{end}}

{{define "confirm"}}{{template "head" .}}
<section class="card">
  <p>Invalidate {{template "what" .Inv}}?</p>
  {{if eq .Inv.Kind "pattern"}}<p class="muted">The pattern is a Redis glob (* ? [ ] and \ escapes) matched within the cache's prefix; matching keys are found with SCAN on every node.</p>{{end}}
  <p class="muted">Every instance drops the entries from its local cache; the next reads load them again.</p>
  <form method="post" action="invalidate" class="forms">
    <input type="hidden" name="csrf" value="{{.Token}}">
    <input type="hidden" name="cache" value="{{.Inv.Cache}}">
    <input type="hidden" name="kind" value="{{.Inv.Kind}}">
    <input type="hidden" name="target" value="{{.Inv.Target}}">
    <button type="submit" class="danger">Invalidate</button>
    <a class="button" href="./">Cancel</a>
  </form>
</section>
{{template "foot" .}}{{end}}

{{define "result"}}{{template "head" .}}
<section class="card">
  <p>Invalidate {{template "what" .Inv}}:</p>
  {{if .Error}}<p class="error">Failed: {{.Error}}</p>{{else}}<p class="success">{{.Message}}</p>{{end}}
  <p><a class="button" href="./">Back to the caches</a></p>
</section>
{{template "foot" .}}{{end}}

{{define "error"}}{{template "head" .}}
<p class="error">{{.Message}}</p>
<p><a class="button" href="./">Back to the caches</a></p>
{{template "foot" .}}{{end}}
`
