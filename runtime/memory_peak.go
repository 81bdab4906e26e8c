package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MemoryPeak reads the most memory the cgroup at path (a spec's
// linux.cgroupsPath, such as "/openshell/<id>") has used, from the cgroup
// filesystem mounted at root: cgroup v2's <root>/<path>/memory.peak
// (memory.current on kernels before 5.19, which have no peak), else v1's
// <root>/memory/<path>/memory.max_usage_in_bytes. An absent cgroup is
// fs.ErrNotExist.
func MemoryPeak(root, path string) (int64, error) {
	path = filepath.Join("/", path) // never above root
	for _, f := range []string{
		filepath.Join(root, path, "memory.peak"),
		filepath.Join(root, path, "memory.current"),
		filepath.Join(root, "memory", path, "memory.max_usage_in_bytes"),
	} {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("memory peak: %w", err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("memory peak: %s: %q is not a byte count", f, strings.TrimSpace(string(b)))
		}
		return n, nil
	}
	return 0, fmt.Errorf("memory peak: no memory cgroup %s under %s: %w", path, root, fs.ErrNotExist)
}

// MemoryPeakSampler keeps the highest of a cgroup's memory peaks read
// while it lives: runsc removes a sandbox's cgroup, and its peak with it,
// when the sandbox ends, so the peak is read every interval until Stop.
type MemoryPeakSampler struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once

	// Written by the sampling goroutine only, read after done closes.
	peak int64
	err  error
}

// SampleMemoryPeak starts reading the memory peak of the cgroup at path
// under root (MemoryPeak) every interval, from now until Stop.
func SampleMemoryPeak(root, path string, interval time.Duration) *MemoryPeakSampler {
	s := &MemoryPeakSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if n, err := MemoryPeak(root, path); err == nil {
				s.peak = max(s.peak, n)
			} else {
				s.err = err
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns the highest peak read, or 0 and the
// last error when none was.
func (s *MemoryPeakSampler) Stop() (int64, error) {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	if s.peak > 0 {
		return s.peak, nil
	}
	if s.err == nil {
		return 0, fmt.Errorf("memory peak: nothing read")
	}
	return 0, s.err
}
