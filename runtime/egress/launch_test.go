package egress

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// launchShell is a Launch of a shell script whose ready pipe is fd 4.
func launchShell(t *testing.T, script string, tail int) (Launch, *int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.ExtraFiles = []*os.File{nil, nil}
	waited := new(int)
	return Launch{Name: "helper", Cmd: cmd, ReadyFD: 4, LogFile: filepath.Join(t.TempDir(), "log"), LogTail: tail,
		Reap: true, Waited: func() { *waited++ }}, waited
}

func TestLaunchReady(t *testing.T) {
	l, _ := launchShell(t, "echo starting; echo ready >&4", 0)
	pid, err := l.Run()
	if err != nil || pid <= 0 {
		t.Fatalf("Run: pid %d, %v", pid, err)
	}
}

func TestLaunchSaysWhy(t *testing.T) {
	l, waited := launchShell(t, "echo 'bad config' >&4; sleep 10", 5)
	_, err := l.Run()
	var nr *NotReadyError
	if !errors.As(err, &nr) || err.Error() != "bad config" {
		t.Fatalf("Run: %v, want a NotReadyError saying bad config", err)
	}
	if *waited != 1 {
		t.Errorf("Waited called %d times, want 1", *waited)
	}
}

func TestLaunchExitedQuotesLog(t *testing.T) {
	l, _ := launchShell(t, "echo one; echo two; exit 1", 1)
	_, err := l.Run()
	if want := "it exited; see " + l.LogFile + ": two"; err == nil || err.Error() != want {
		t.Fatalf("Run: %v, want %q", err, want)
	}
	l, _ = launchShell(t, "echo one; exit 1", 0)
	if _, err := l.Run(); err == nil || err.Error() != "it exited; see "+l.LogFile {
		t.Fatalf("Run without LogTail: %v", err)
	}
}

func TestLaunchStartFails(t *testing.T) {
	l, waited := launchShell(t, "", 0)
	l.Start = func() error { return errors.New("no") }
	if _, err := l.Run(); err == nil || err.Error() != "start helper: no" {
		t.Fatalf("Run: %v, want start helper: no", err)
	}
	if *waited != 0 {
		t.Errorf("Waited called for a process never started")
	}
}
