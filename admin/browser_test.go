package admin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/admin"
)

// TestBrowser renders the operator page in headless Chromium: the index as a screenshot (a PNG
// of the window's size, not blank), the key and confirmation pages as DOM dumps. It runs only
// when CACHEASIDE_CHROMIUM names the browser (make verify: scripts/chromium.sh installs it);
// CACHEASIDE_SCREENSHOT is where the screenshot goes (make admin-screenshot: docs/admin.png).
func TestBrowser(t *testing.T) {
	browser := os.Getenv("CACHEASIDE_CHROMIUM")
	if browser == "" {
		t.Skip("CACHEASIDE_CHROMIUM is not set (make verify sets it)")
	}
	h := demoHandler(t)
	srv := httptest.NewServer(h)
	defer srv.Close()
	base := srv.URL + admin.DefaultPath

	const width, height = 1100, 1250
	shot := filepath.Join(t.TempDir(), "admin.png")
	chromium(t, browser, fmt.Sprintf("--window-size=%d,%d", width, height), "--hide-scrollbars", "--screenshot="+shot, base)
	img := readPNG(t, shot)
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Fatalf("screenshot is %v, want %dx%d", b, width, height)
	}
	if n := colours(img); n < 16 {
		t.Fatalf("screenshot has %d colours: blank or unstyled", n)
	}
	if out := os.Getenv("CACHEASIDE_SCREENSHOT"); out != "" {
		var buf bytes.Buffer
		if err := (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", out, buf.Len())
	}

	dom := chromium(t, browser, "--dump-dom", base+"key?"+url.Values{"cache": {"users"}, "key": {"user:1"}}.Encode())
	for _, want := range []string{"<th>Hit</th><td>yes</td>", "<th>Codec</th><td>json</td>", "hidden (the handler"} {
		if !strings.Contains(dom, want) {
			t.Fatalf("key page as Chromium sees it lacks %q:\n%s", want, dom)
		}
	}
	dom = chromium(t, browser, "--dump-dom", base+"invalidate?cache=users&kind=pattern&target=user:*")
	if !strings.Contains(dom, `<form method="post" action="invalidate"`) || !strings.Contains(dom, `name="csrf"`) {
		t.Fatalf("confirmation page as Chromium sees it has no form:\n%s", dom)
	}
}

// chromium runs the headless browser with args and returns its standard output.
func chromium(t *testing.T, browser string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, browser, append(flags, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", browser, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

// unreachableStore is a store that does not answer: its cache's breaker opens.
type unreachableStore struct{ cacheaside.Store }

var errUnreachable = errors.New("dial tcp 10.0.0.7:6379: connect: connection refused")

func (unreachableStore) GetOrLease(context.Context, string, string, time.Duration) (cacheaside.Lookup, error) {
	return cacheaside.Lookup{}, errUnreachable
}
func (unreachableStore) Ping(context.Context) error { return errUnreachable }

// demoHandler is a handler over three caches with some traffic: the page of the screenshot.
func demoHandler(t *testing.T) *admin.Handler {
	ctx := context.Background()
	store := memStore(t)
	users, err := cacheaside.New[user](store, cacheaside.WithPrefix("app:user:"), cacheaside.WithTTL(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { users.Close() })
	sessions, err := cacheaside.New[[]byte](store, cacheaside.WithPrefix("app:session:"), cacheaside.WithCodec(cacheaside.RawCodec{}),
		cacheaside.WithTTL(30*time.Minute), cacheaside.WithLocalCache(10000, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sessions.Close() })
	catalog, err := cacheaside.New[map[string]int](unreachableStore{store}, cacheaside.WithPrefix("app:catalog:"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { catalog.Close() })

	for i := range 40 {
		key := fmt.Sprintf("user:%d", i%12)
		_, _ = users.GetOrLoad(ctx, key, func(context.Context) (user, error) {
			if i == 7 {
				return user{}, cacheaside.ErrNotFound
			}
			if i == 9 {
				return user{}, errors.New("db timeout")
			}
			return user{Name: key, Secret: secret}, nil
		})
		_, _ = sessions.GetOrLoad(ctx, fmt.Sprintf("s%d", i%5), func(context.Context) ([]byte, error) { return []byte("token"), nil })
	}
	_ = users.Invalidate(ctx, "user:3")
	for range 3 {
		_, _ = catalog.GetOrLoad(ctx, "all", func(context.Context) (map[string]int, error) { return map[string]int{"a": 1}, nil })
	}
	h := admin.New()
	register(t, h, "users", users)
	register(t, h, "sessions", sessions)
	register(t, h, "catalog", catalog)
	return h
}
