package userservice

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MaxBatch is the most ids GET /users?ids= accepts.
const MaxBatch = 100

// UserInput is the body of PUT /users/{id}.
type UserInput struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

// BatchResponse is the body of GET /users?ids=: the users found, in the order asked, and the
// ids that do not exist.
type BatchResponse struct {
	Users   []User  `json:"users"`
	Missing []int64 `json:"missing"`
}

func (s *Service) routes(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", s.getUser)
	mux.HandleFunc("PUT /users/{id}", s.putUser)
	mux.HandleFunc("DELETE /users/{id}", s.deleteUser)
	mux.HandleFunc("GET /users", s.getUsers)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return s.instrument(mux)
}

func (s *Service) getUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	u, err := s.repo.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *Service) putUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var in UserInput
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "body: want JSON {\"name\": ..., \"email\": ...}")
		return
	}
	if strings.TrimSpace(in.Name) == "" {
		writeError(w, http.StatusBadRequest, "name must not be empty")
		return
	}
	u, err := s.repo.Put(r.Context(), User{ID: id, Name: in.Name, Email: in.Email})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	code := http.StatusOK
	if u.Version == 1 {
		code = http.StatusCreated
	}
	writeJSON(w, code, u)
}

func (s *Service) deleteUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := s.repo.Delete(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) getUsers(w http.ResponseWriter, r *http.Request) {
	raw := r.URL.Query().Get("ids")
	if raw == "" {
		writeError(w, http.StatusBadRequest, "want ?ids=1,2,3")
		return
	}
	parts := strings.Split(raw, ",")
	if len(parts) > MaxBatch {
		writeError(w, http.StatusBadRequest, "at most "+strconv.Itoa(MaxBatch)+" ids")
		return
	}
	ids := make([]int64, 0, len(parts))
	seen := make(map[int64]bool, len(parts))
	for _, p := range parts {
		id, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil || id <= 0 {
			writeError(w, http.StatusBadRequest, "ids must be positive integers")
			return
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	found, err := s.repo.GetMany(r.Context(), ids)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	resp := BatchResponse{Users: make([]User, 0, len(found)), Missing: []int64{}}
	for _, id := range ids {
		if u, ok := found[id]; ok {
			resp.Users = append(resp.Users, u)
		} else {
			resp.Missing = append(resp.Missing, id)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "id must be a positive integer")
		return 0, false
	}
	return id, true
}

// fail answers an error from the repository: 404 for a missing user, nothing for a client
// that left, 500 (logged) otherwise.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, cacheaside.ErrNotFound):
		writeError(w, http.StatusNotFound, "user not found")
	case r.Context().Err() != nil:
		w.WriteHeader(499) // the client closed the request; nobody reads this
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// instrument counts requests and their latency by route pattern (never by raw path, which
// would make one series per user).
func (s *Service) instrument(next *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern // set by the mux
		if route == "" {
			route = "unmatched"
		}
		s.http.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		s.http.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
