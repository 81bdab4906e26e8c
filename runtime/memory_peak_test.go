package runtime

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeCgroupFile(t *testing.T, dir, name, value string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryPeak(t *testing.T) {
	const path = "/openshell/openshell-0123"
	for _, tc := range []struct {
		name  string
		files map[string]string // relative to root
		want  int64
	}{
		{"v1", map[string]string{"memory/openshell/openshell-0123/memory.max_usage_in_bytes": "73400320\n", "memory/openshell/openshell-0123/memory.usage_in_bytes": "1\n"}, 73400320},
		{"v2", map[string]string{"openshell/openshell-0123/memory.peak": "52428800\n", "openshell/openshell-0123/memory.current": "1\n"}, 52428800},
		{"v2 without memory.peak", map[string]string{"openshell/openshell-0123/memory.current": "4096\n"}, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for f, v := range tc.files {
				writeCgroupFile(t, filepath.Join(root, filepath.Dir(f)), filepath.Base(f), v)
			}
			got, err := MemoryPeak(root, path)
			if err != nil || got != tc.want {
				t.Fatalf("MemoryPeak = %d, %v; want %d", got, err, tc.want)
			}
		})
	}

	root := t.TempDir()
	if _, err := MemoryPeak(root, path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no cgroup: %v, want ErrNotExist", err)
	}
	writeCgroupFile(t, filepath.Join(root, "memory", path), "memory.max_usage_in_bytes", "max\n")
	if _, err := MemoryPeak(root, path); err == nil {
		t.Error("a peak that is not a number was read")
	}
	// A path never leads above root.
	outside := t.TempDir()
	writeCgroupFile(t, outside, "memory.peak", "1\n")
	if _, err := MemoryPeak(filepath.Join(root, "x"), "../../"+filepath.Base(outside)); err == nil {
		t.Error("read a cgroup above root")
	}
}

func TestMemoryPeakSampler(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "memory", "openshell", "sb")
	s := SampleMemoryPeak(root, "/openshell/sb", time.Millisecond)
	// The cgroup appears after sampling starts (runsc makes it), its peak
	// rises, and it goes before Stop (runsc removes it): the highest read
	// is kept.
	time.Sleep(5 * time.Millisecond)
	for _, v := range []string{"1000", "5000"} {
		writeCgroupFile(t, dir, "memory.max_usage_in_bytes", v)
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if got, err := s.Stop(); got != 5000 || err != nil {
		t.Errorf("Stop = %d, %v; want 5000", got, err)
	}
	if got, _ := s.Stop(); got != 5000 {
		t.Errorf("second Stop = %d", got)
	}

	s = SampleMemoryPeak(t.TempDir(), "/openshell/none", time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	if got, err := s.Stop(); got != 0 || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no cgroup: Stop = %d, %v", got, err)
	}
}
