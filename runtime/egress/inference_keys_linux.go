package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/policyhook/policy"
	"github.com/openshell/openshell/runtime/inference"
)

// Keys reach the serving process one call at a time, from its keeper:
// the keeper (root, outside Landlock on every thread but the one that
// forked) holds one end of a SOCK_SEQPACKET pair, the serving process the
// other. The serving process sends "credential SEQ NAME"; the keeper
// reads the provider's credential afresh and answers "ok SEQ KEY" or
// "err SEQ REASON" (SEQ lets a late answer to a question that timed out
// be told apart). It answers only for the provider the sandbox's current
// policy routes to. A key is never
// written to a file, the serving process's environment or a log.

// envCredFD names the serving process's end of the pair.
const envCredFD = "OPENSHELL_EGRESS_CRED_FD"

// maxCredMessage bounds a message either way (a key is at most 16 KiB).
const maxCredMessage = 32 << 10

// startCredentials gives cmd (the serving process, not yet started) its
// end of the pair and starts answering on the keeper's. Variables that
// env: credentials name are taken out of cmd's environment. With no
// providers configured it does nothing.
func startCredentials(pc processConfig, cmd *exec.Cmd) (io.Closer, error) {
	providers := pc.InferenceProviders
	if len(providers) == 0 {
		return io.NopCloser(nil), nil
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("credential channel: %w", err)
	}
	keeper, child := os.NewFile(uintptr(fds[0]), "credentials"), os.NewFile(uintptr(fds[1]), "credentials")
	cmd.ExtraFiles = append(cmd.ExtraFiles, child)
	var hidden []string
	for _, p := range providers {
		if kind, name, err := inference.ParseSource(p.Credential); err == nil && kind == "env" {
			hidden = append(hidden, name+"=")
		}
	}
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool {
		return slices.ContainsFunc(hidden, func(prefix string) bool { return strings.HasPrefix(kv, prefix) })
	})
	cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", envCredFD, 3+len(cmd.ExtraFiles)-1))
	go serveCredentials(keeper, pc.PolicyFile, providers, os.Getenv)
	return keeper, nil
}

// serveCredentials answers on c until the serving process closes its end.
func serveCredentials(c *os.File, policyFile string, providers []inference.Provider, getenv func(string) string) {
	buf := make([]byte, maxCredMessage)
	pol := &policyCache{file: policyFile}
	for {
		n, err := c.Read(buf)
		if err != nil || n == 0 {
			return
		}
		q, ok := strings.CutPrefix(string(buf[:n]), "credential ")
		seq, name, ok2 := strings.Cut(q, " ")
		var reply []byte
		if key, err := credentialFor(name, ok && ok2, pol, providers, getenv); err != nil {
			reply = []byte("err " + seq + " " + err.Error())
		} else {
			reply = append([]byte("ok "+seq+" "), key...)
		}
		_, err = c.Write(reply)
		clear(reply)
		if err != nil {
			return
		}
	}
}

// credentialFor is the key of provider name, when the sandbox's current
// policy routes to it.
func credentialFor(name string, ok bool, pol *policyCache, providers []inference.Provider, getenv func(string) string) (string, error) {
	if !ok {
		return "", errors.New("not a credential request")
	}
	i := slices.IndexFunc(providers, func(p inference.Provider) bool { return p.Name == name })
	if i < 0 {
		return "", fmt.Errorf("no provider %q is configured", name)
	}
	p, err := pol.load()
	if err != nil {
		return "", fmt.Errorf("the sandbox's policy: %w", err)
	}
	if p.Inference == nil {
		return "", errors.New("the sandbox's policy has no inference route")
	}
	// The cloud route's provider, or the privacy route's: each is
	// resolved on its own, so a key goes only to its own base_url.
	routes := []*policy.Inference{p.Inference}
	if l := p.Inference.Local; l != nil {
		routes = append(routes, l.Route())
	}
	var errs []error
	for _, r := range routes {
		t, err := inference.Resolve(r, providers)
		switch {
		case err != nil:
			errs = append(errs, err)
		case t.Provider != nil && t.Provider.Name == name:
			return inference.ReadCredential(providers[i].Credential, getenv)
		}
	}
	if len(errs) > 0 {
		return "", errors.Join(errs...)
	}
	return "", fmt.Errorf("the sandbox's route does not lead to provider %s", name)
}

// policyCache is the sandbox's current policy as the keeper last parsed
// it: parsed again only when the file changes (its inode, size, change or
// modification time), since parsing and validating a policy on every
// inference call cost most of the gateway's added latency.
type policyCache struct {
	file  string
	stamp [4]int64
	p     *policy.Policy
}

func (c *policyCache) load() (*policy.Policy, error) {
	var st unix.Stat_t
	if err := unix.Stat(c.file, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", c.file, err)
	}
	stamp := [4]int64{int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()}
	if c.p != nil && stamp == c.stamp {
		return c.p, nil
	}
	p, err := policy.Load(c.file)
	if err != nil {
		c.p = nil
		return nil, err
	}
	c.p, c.stamp = p, stamp
	return p, nil
}

// credTTL is how long the serving process keeps a key it was given:
// asking the keeper at every call cost a wake-up of another process per
// model call (about 0.1 ms of the router's added latency here). A
// rotated, removed or loosened credential file takes effect within it; a
// reload of the policy drops every key held (forget).
const credTTL = time.Second

// credClient is the serving process's end: one question at a time.
type credClient struct {
	mu   sync.Mutex
	f    *os.File
	seq  uint64
	buf  []byte // the answer's buffer, cleared after each answer
	keys map[string]heldKey
	now  func() time.Time
}

// heldKey is a key the keeper gave, and until when it may be used
// without asking again.
type heldKey struct {
	key   string
	until time.Time
}

// openCredentials takes the end of the pair the keeper gave this
// process, if it gave one.
func (g *Gateway) openCredentials() error {
	v := os.Getenv(envCredFD)
	if v == "" {
		return nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q is not a descriptor", envCredFD, v)
	}
	// Non-blocking, so that a question can time out.
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("credential channel: %w", err)
	}
	c := &credClient{f: os.NewFile(uintptr(fd), "credentials"), now: time.Now}
	g.inference.cred, g.inference.forget = c.get, c.forget
	return nil
}

// forget drops every key held: the next call of each provider asks the
// keeper again.
func (c *credClient) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.keys)
}

// get is provider name's key: the one held, for up to credTTL, else the
// keeper's answer. A refusal is never held: the next call asks again.
// Keys past their time are dropped, whichever provider they are for.
func (c *credClient) get(ctx context.Context, name string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if k, ok := c.keys[name]; ok && now.Before(k.until) {
		return k.key, nil
	}
	maps.DeleteFunc(c.keys, func(_ string, k heldKey) bool { return !now.Before(k.until) })
	key, err := c.ask(ctx, name)
	if err != nil {
		return "", err
	}
	if c.keys == nil {
		c.keys = map[string]heldKey{}
	}
	c.keys[name] = heldKey{key: key, until: now.Add(credTTL)}
	return key, nil
}

// ask puts the question to the keeper; c.mu is held.
func (c *credClient) ask(ctx context.Context, name string) (string, error) {
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.f.SetDeadline(dl)
	c.seq++
	seq := strconv.FormatUint(c.seq, 10)
	if _, err := c.f.Write([]byte("credential " + seq + " " + name)); err != nil {
		return "", fmt.Errorf("ask the gateway's keeper: %w", err)
	}
	if c.buf == nil {
		c.buf = make([]byte, maxCredMessage)
	}
	buf := c.buf
	defer clear(buf)
	for {
		n, err := c.f.Read(buf)
		if err != nil {
			return "", fmt.Errorf("ask the gateway's keeper: %w", err)
		}
		if key, ok := bytes.CutPrefix(buf[:n], []byte("ok "+seq+" ")); ok {
			return string(key), nil
		}
		if why, ok := bytes.CutPrefix(buf[:n], []byte("err "+seq+" ")); ok {
			return "", errors.New(string(why))
		}
		// An answer to an earlier question that timed out: skipped.
	}
}
