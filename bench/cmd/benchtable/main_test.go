package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	in := `goos: linux
cpu: Some CPU
,bench.out,
,sec/op,CI
RedisHit/ours/serial-2,4.5e-05,3%
RedisHit/ours/parallel-2,1.2e-06,∞
ColdKeyInstances/ours-2,0.048,∞
geomean,1e-05,

,bench.out,
,B/op,CI
RedisHit/ours/serial-2,1519,0%
RedisHit/ours/parallel-2,2074,0%
geomean,1700,

,bench.out,
,loader-calls/op,CI
ColdKeyInstances/ours-2,1,∞

,bench.out,
,p99-sec,CI
ColdKeyInstances/ours-2,0.0215,∞

,bench.out,
,bytes/value,CI
ColdKeyInstances/ours-2,1398115,∞
`
	tables, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for _, tb := range tables {
		tb.print(&out)
	}
	want := `
**RedisHit**

| case | time/op | B/op |
|---|---:|---:|
| ours/serial | 45.00µs ± 3% | 1519 B ± 0% |
| ours/parallel | 1.20µs | 2074 B ± 0% |

**ColdKeyInstances**

| case | time/op | loader-calls/op | p99-sec | bytes/value |
|---|---:|---:|---:|---:|
| ours | 48.00ms | 1 | 21.50ms | 1398115 |
`
	if out.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}
