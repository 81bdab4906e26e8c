package egress

import (
	"context"
	"maps"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCredClientHoldsKeyForTTL: the serving process asks its keeper for
// a provider's key at most once a credTTL; past it, the next call asks
// again (a rotated key takes effect), a refusal is never held, a reload
// forgets every key, and a key past its time does not stay in memory.
func TestCredClientHoldsKeyForTTL(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	keeper, child := os.NewFile(uintptr(fds[0]), "keeper"), os.NewFile(uintptr(fds[1]), "child")
	defer keeper.Close()
	defer child.Close()
	var asked atomic.Int32
	answer := atomic.Value{}
	answer.Store("ok %s key-1")
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := keeper.Read(buf)
			if err != nil || n == 0 {
				return
			}
			asked.Add(1)
			f := strings.Fields(string(buf[:n])) // credential SEQ NAME
			keeper.Write([]byte(strings.Replace(answer.Load().(string), "%s", f[1], 1)))
		}
	}()
	now := time.Unix(1000, 0)
	c := &credClient{f: child, now: func() time.Time { return now }}
	get := func(want string, wantAsked int32) {
		t.Helper()
		key, err := c.get(context.Background(), "a")
		if err != nil && want != "" || err == nil && key != want {
			t.Fatalf("key %q, %v; want %q", key, err, want)
		}
		if got := asked.Load(); got != wantAsked {
			t.Fatalf("the keeper was asked %d times, want %d", got, wantAsked)
		}
	}
	get("key-1", 1)
	now = now.Add(credTTL / 2)
	get("key-1", 1)
	answer.Store("ok %s key-2") // rotated
	get("key-1", 1)
	now = now.Add(credTTL)
	get("key-2", 2)
	answer.Store("err %s the credential file is world-readable")
	now = now.Add(credTTL)
	get("", 3)
	get("", 4)
	answer.Store("ok %s key-3")
	get("key-3", 5)

	// A reload forgets every key: the next call asks again.
	c.forget()
	if len(c.keys) != 0 {
		t.Fatalf("after forget: %d keys held", len(c.keys))
	}
	get("key-3", 6)
	// A key past its time is dropped at the next call for any provider,
	// not kept until its own provider is asked for again.
	now = now.Add(credTTL)
	if _, err := c.get(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.keys["a"]; ok || len(c.keys) != 1 {
		t.Errorf("keys held after a's time: %v", slices.Collect(maps.Keys(c.keys)))
	}
}
