package cacheaside

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// optionalModules are the modules the core package must not import, directly or not: their
// features live in subpackages (cacheasideprom, cacheasideotel, codec/msgpack, codec/proto),
// so that a program using only New and NewMemoryStore links none of them.
var optionalModules = []string{
	"github.com/prometheus/",
	"google.golang.org/protobuf",
	"go.opentelemetry.io/",
	"github.com/vmihailenco/msgpack",
}

// The core package's dependencies (not its tests') include none of the optional modules.
func TestCoreImportsNoOptionalModule(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	require.NoError(t, err, "go list: %s", out)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/cacheaside/cacheaside", "go list listed the core package")
	var found []string
	for _, d := range deps {
		for _, m := range optionalModules {
			if strings.HasPrefix(d, m) {
				found = append(found, d)
			}
		}
	}
	require.Empty(t, found, "the core package imports optional modules: move the feature into a subpackage")
}
