package envelope

import (
	"reflect"
	"sync"
	"testing"
	"time"

	v1 "github.com/cacheaside/cacheaside/internal/schematest/v1/models"
	v2 "github.com/cacheaside/cacheaside/internal/schematest/v2/models"
)

// goldenNode covers every construct DescribeType writes.
type goldenNode struct {
	ID       int    `json:"id"`
	Name     string `json:"name,omitempty" msgpack:"name"`
	Children []*goldenNode
	Attrs    map[string][2]float64
	Created  time.Time
	goldenEmbedded
	private int //nolint:unused // an unexported field the schema must leave out
	Any     any
	Fn      func(int, ...string) (bool, error)
	Ch      <-chan byte
	Status  goldenStatus
	Pair    goldenPair[goldenStatus]
}

type goldenEmbedded struct {
	Level  int8
	hidden bool //nolint:unused // an unexported field the schema must leave out
}

type goldenStatus uint16

type goldenPair[T any] struct{ A, B T }

// The description and the fingerprint are stored in every entry and compared by other
// processes: they are fixed for a given type. A change to either here is a change of the
// format, which makes every cached entry a miss after a deploy: do it on purpose only.
func TestDescribeTypeGolden(t *testing.T) {
	const pkg = "github.com/cacheaside/cacheaside/internal/envelope."
	want := pkg + `goldenNode=struct{` +
		`ID int "json:\"id\"";` +
		`Name string "json:\"name,omitempty\" msgpack:\"name\"";` +
		`Children []*@1;` +
		`Attrs map[string][2]float64;` +
		`Created time.Time=struct{};` +
		`embed goldenEmbedded ` + pkg + `goldenEmbedded=struct{Level int8};` +
		`Any interface{};` +
		`Fn func(int,...string)(bool,error);` +
		`Ch <-chan uint8;` +
		`Status ` + pkg + `goldenStatus=uint16;` +
		`Pair ` + pkg + `goldenPair[` + pkg + `goldenStatus]=struct{A @4;B @4}}`
	got := DescribeType(reflect.TypeFor[goldenNode]())
	if got != want {
		t.Fatalf("description changed:\n got %s\nwant %s", got, want)
	}
	if s := Schema("json", got); s != 0xe852b8d7 {
		t.Fatalf("fingerprint %#x, want 0xe852b8d7", s)
	}
	if s := Schema("msgpack", got); s == 0xe852b8d7 {
		t.Fatal("the codec is not part of the fingerprint")
	}
}

// The description depends on the type only: not on map iteration, pointers or goroutines.
func TestDescribeTypeStable(t *testing.T) {
	want := DescribeType(reflect.TypeFor[goldenNode]())
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if got := DescribeType(reflect.TypeFor[goldenNode]()); got != want {
					t.Errorf("got %s, want %s", got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}

type (
	mutualA  struct{ B *mutualB }
	mutualB  struct{ A []mutualA }
	myString string
)

// Types a codec may read differently get different descriptions; so do the same shapes
// under another import path.
func TestDescribeTypeDistinguishes(t *testing.T) {
	types := map[string]reflect.Type{
		"v1.User":       reflect.TypeFor[v1.User](),
		"v2.User":       reflect.TypeFor[v2.User](),
		"base":          reflect.TypeFor[struct{ ID int }](),
		"renamed field": reflect.TypeFor[struct{ Key int }](),
		"retyped field": reflect.TypeFor[struct{ ID int64 }](),
		"tagged": reflect.TypeFor[struct {
			ID int `json:"id"`
		}](),
		"retagged": reflect.TypeFor[struct {
			ID int `json:"user_id"`
		}](),
		"msgpack tag": reflect.TypeFor[struct {
			ID int `msgpack:"id"`
		}](),
		"added field":     reflect.TypeFor[struct{ ID, Age int }](),
		"reordered":       reflect.TypeFor[struct{ Age, ID int }](),
		"pointer field":   reflect.TypeFor[struct{ ID *int }](),
		"embedded":        reflect.TypeFor[struct{ goldenEmbedded }](),
		"array 2":         reflect.TypeFor[[2]int](),
		"array 3":         reflect.TypeFor[[3]int](),
		"slice":           reflect.TypeFor[[]int](),
		"map int key":     reflect.TypeFor[map[int]string](),
		"map string key":  reflect.TypeFor[map[string]string](),
		"string":          reflect.TypeFor[string](),
		"named string":    reflect.TypeFor[myString](),
		"bytes":           reflect.TypeFor[[]byte](),
		"chan":            reflect.TypeFor[chan int](),
		"send chan":       reflect.TypeFor[chan<- int](),
		"error":           reflect.TypeFor[error](),
		"any":             reflect.TypeFor[any](),
		"stringer":        reflect.TypeFor[interface{ String() string }](),
		"mutual":          reflect.TypeFor[mutualA](),
		"pair of int":     reflect.TypeFor[goldenPair[int]](),
		"pair of status":  reflect.TypeFor[goldenPair[goldenStatus]](),
		"variadic func":   reflect.TypeFor[func(...int)](),
		"slice arg func":  reflect.TypeFor[func([]int)](),
		"time":            reflect.TypeFor[time.Time](),
		"pointer to time": reflect.TypeFor[*time.Time](),
	}
	seen := map[string]string{}
	for name, typ := range types {
		d := DescribeType(typ)
		if other, dup := seen[d]; dup {
			t.Errorf("%s and %s have one description: %s", name, other, d)
		}
		seen[d] = name
	}
	if a, b := reflect.TypeFor[v1.User]().String(), reflect.TypeFor[v2.User]().String(); a != b {
		t.Fatalf("the test needs two types of one String, got %s and %s", a, b)
	}
}

// Fields no codec reads are not part of it; the same shape is the same description.
func TestDescribeTypeIgnoresUnexportedFields(t *testing.T) {
	a := DescribeType(reflect.TypeFor[struct {
		ID     int
		hidden string
	}]())
	b := DescribeType(reflect.TypeFor[struct{ ID int }]())
	if a != b {
		t.Fatalf("%s != %s", a, b)
	}
	if d := DescribeType(reflect.TypeFor[mutualA]()); d != "github.com/cacheaside/cacheaside/internal/envelope.mutualA=struct{B *github.com/cacheaside/cacheaside/internal/envelope.mutualB=struct{A []@1}}" {
		t.Fatalf("recursive type: %s", d)
	}
}
