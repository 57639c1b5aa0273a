//go:build unix

package bench

import "syscall"

// processCPU returns the CPU time (user + system) this process has used, in nanoseconds, or
// -1 where it is not available. On a shared machine it is steadier than wall time.
func processCPU() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return -1
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
