// Command userservice serves the users API of package userservice.
//
//	cd examples && go run ./userservice/cmd/userservice -seed 1000
//	curl localhost:8080/users/1
//
// It uses PostgreSQL when DATABASE_URL is set and Redis when REDIS_URL is set; otherwise an
// embedded SQLite database and an embedded miniredis, which live as long as the process.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cacheaside/cacheaside/examples/userservice"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	seed := flag.Int("seed", 0, "write users 1..n at start")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, *seed, log); err != nil {
		log.Error("userservice", "err", err)
		os.Exit(1)
	}
}

func run(addr string, seed int, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg := userservice.ConfigFromEnv()
	cfg.Logger = log
	svc, err := userservice.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer svc.Close()
	if seed > 0 {
		if err := svc.Seed(ctx, seed); err != nil {
			return err
		}
	}
	srv := &http.Server{Addr: addr, Handler: svc.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving", "addr", addr, "on", svc.Describe(), "seeded", seed)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
