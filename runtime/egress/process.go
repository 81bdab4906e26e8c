package egress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The gateway process gets its sockets as inherited files, in this order
// from fd 3, then the ready pipe.
const (
	fdDNSUDP = 3 + iota
	fdDNSTCP
	fdProxy
	fdHTTP
	fdTLS
	fdCatch
	fdUDPCatch
	fdICMP
	// fdAttr is the unix socket the sentry's attribution sink connects
	// to (/dev/null when the sandbox has none).
	fdAttr
	fdReady
	// fdAudit is the serving process's audit file, opened by its keeper:
	// the serving process cannot reach the audit directory.
	fdAudit
	// fdDir is the serving process's directory (its config and policy
	// copy), opened by its keeper.
	fdDir
	// fdCA is the sandbox CA's certificate and key, and fdUpstreamCA the
	// bundle servers are verified against: both opened by the keeper,
	// since the serving process may not read them by name.
	fdCA
	fdUpstreamCA
)

// StartOptions start a sandbox's gateway process.
type StartOptions struct {
	// Command is the gateway's command line without the config path,
	// e.g. {"/usr/bin/openshell-runtime", "gateway"}.
	Command []string
	Config  Config
	// ConfigFile is where the config is written for the process.
	ConfigFile string
	Topology   *Topology
	// UplinkNetns is the namespace the gateway dials from; empty: ours.
	UplinkNetns string
	// LogFile takes the gateway's own log (not the audit log).
	LogFile string
	// DieWithParent ends the gateway with the process that starts it
	// (openshell run); a runtime that exits after create leaves it be.
	DieWithParent bool
	// Confine is what the serving process is held to; zero: the defaults.
	Confine Confine
	// AttributionSocket, when set, is where the gateway listens for the
	// sentry's attribution sink (Config.Attribution is set with it).
	AttributionSocket string
}

// processConfig is the file Start writes for the gateway process.
type processConfig struct {
	Config
	Confine Confine `json:"confine"`
}

// Start opens the gateway's sockets, starts the gateway process and waits
// until it has loaded the policy. It returns the process's pid.
func Start(o StartOptions) (int, error) {
	o.Config.Attribution = o.AttributionSocket != ""
	data, err := json.MarshalIndent(processConfig{o.Config, o.Confine.WithDefaults()}, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("gateway config: %w", err)
	}
	if err := os.WriteFile(o.ConfigFile, data, 0o600); err != nil {
		return 0, fmt.Errorf("gateway config: %w", err)
	}
	files, err := o.Topology.Listen()
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	attr, err := listenAttribution(o.AttributionSocket)
	if err != nil {
		return 0, err
	}
	files = append(files, attr)
	cmd := exec.Command(o.Command[0], append(o.Command[1:], o.ConfigFile)...)
	cmd.ExtraFiles = append(files, nil) // the ready pipe
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	l := Launch{Name: "gateway", Cmd: cmd, ReadyFD: fdReady, LogFile: o.LogFile, LogTail: 5, Reap: o.DieWithParent}
	if o.UplinkNetns != "" {
		// A child is born in the namespace of the thread that forks it.
		l.Start = func() error { return Do(o.UplinkNetns, cmd.Start) }
	}
	pid, err := l.Run()
	var nr *NotReadyError
	if errors.As(err, &nr) {
		return 0, fmt.Errorf("egress gateway: %w", err)
	}
	return pid, err
}

// Main is the gateway process. Started by the runtime (as root, in the
// uplink namespace, holding the sockets), it is the keeper (keeper_linux.go):
// it confines and starts the serving process, and mirrors the policy file
// for it. The serving process (serve) serves the inherited sockets until
// it gets SIGTERM or SIGINT, reloads the policy on SIGHUP, and watches the
// policy file.
func Main(configFile string) error {
	if os.Getenv(envServe) == "1" {
		return runServing(configFile)
	}
	return runKeeper(configFile)
}

// readyPipe is where a gateway process tells the runtime it is ready, or
// why it is not; its file is nil once said or handed on.
type readyPipe struct{ f *os.File }

// fail reports err on the pipe, on one line, and returns it.
func (r *readyPipe) fail(err error) error {
	if r.f != nil {
		fmt.Fprintln(r.f, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return err
}

// readGatewayConfig reads the JSON a gateway process is started with.
func readGatewayConfig(file string, v any) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("gateway config: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("gateway config %s: %w", file, err)
	}
	return nil
}

// runServing is the confined serving process: it is born unprivileged (no
// capabilities, no_new_privs, its own cgroup, Landlock), loads its
// policy and opens its audit file, then shuts the rest of the kernel's
// interface behind a seccomp filter before it says ready.
func runServing(configFile string) error {
	ready := readyPipe{os.NewFile(fdReady, "ready")}
	fail := ready.fail
	var cfg Config
	if err := readGatewayConfig(configFile, &cfg); err != nil {
		return fail(err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("sandbox", cfg.Sandbox)
	l, err := inherited(cfg.Attribution)
	if err != nil {
		return fail(err)
	}
	g, err := New(cfg, log)
	if err != nil {
		return fail(err)
	}
	if err := g.openCredentials(); err != nil {
		return fail(err)
	}
	if err := g.openKeeperChannels(log); err != nil {
		return fail(err)
	}
	// A benchmark build (confine_bench_on.go) serves unconfined.
	if !benchUnconfined {
		if err := CheckConfined(); err != nil {
			return fail(err)
		}
		if err := installSeccomp(seccompAllowed); err != nil {
			return fail(err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	hup := make(chan struct{}, 1)
	go func() {
		for range hups {
			select {
			case hup <- struct{}{}:
			default:
			}
		}
	}()
	go g.Watch(ctx, 250*time.Millisecond, hup)
	if _, err := fmt.Fprintln(ready.f, "ready"); err != nil {
		return err
	}
	_ = ready.f.Close()
	ready.f = nil
	log.Info("gateway serving", "policy", cfg.PolicyFile, "audit", cfg.AuditFile, "uid", os.Getuid())
	return g.Serve(ctx, l)
}

func inherited(attribution bool) (Listeners, error) {
	var l Listeners
	var errs []error
	ln := func(fd int, name string) net.Listener {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		x, err := net.FileListener(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("inherited %s socket: %w", name, err))
		}
		return x
	}
	f := os.NewFile(fdDNSUDP, "dns-udp")
	pc, err := net.FilePacketConn(f)
	_ = f.Close()
	if err != nil {
		errs = append(errs, fmt.Errorf("inherited dns-udp socket: %w", err))
	}
	l.DNSUDP = pc
	l.DNSTCP = ln(fdDNSTCP, "dns-tcp")
	l.Proxy = ln(fdProxy, "proxy")
	l.HTTP = ln(fdHTTP, "http")
	l.TLS = ln(fdTLS, "tls")
	l.Catch = ln(fdCatch, "catch")
	uf := os.NewFile(fdUDPCatch, "udp-catch")
	upc, err := net.FilePacketConn(uf)
	_ = uf.Close()
	if err != nil {
		errs = append(errs, fmt.Errorf("inherited udp-catch socket: %w", err))
	} else {
		l.UDPCatch = upc.(*net.UDPConn)
	}
	l.ICMP = os.NewFile(fdICMP, "icmp")
	if attribution {
		l.Attr = ln(fdAttr, "attribution")
	} else {
		_ = unix.Close(fdAttr)
	}
	return l, errors.Join(errs...)
}

// ResolvConf is the sandbox's /etc/resolv.conf: the gateway only.
func ResolvConf() string {
	return fmt.Sprintf("# written by openshell: the egress gateway answers only names the policy allows\nnameserver %s\noptions ndots:1\n", GatewayAddr.Addr())
}

// ProxyURL is what HTTP_PROXY and HTTPS_PROXY say in the sandbox.
func ProxyURL() string { return fmt.Sprintf("http://%s:%d", GatewayAddr.Addr(), ProxyPort) }

// NetnsExists reports whether path is a network namespace.
func NetnsExists(path string) bool {
	h, err := netns.GetFromPath(filepath.Clean(path))
	if err != nil {
		return false
	}
	_ = h.Close()
	return true
}

// listenAttribution opens the unix socket runsc connects the sentry's
// attribution sink to at create (as root: the state directory is root's
// alone). Without a path, /dev/null holds the descriptor's place.
func listenAttribution(path string) (*os.File, error) {
	if path == "" {
		return os.Open(os.DevNull)
	}
	_ = os.Remove(path)
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("attribution socket: %w", err)
	}
	l.SetUnlinkOnClose(false) // the gateway's copy serves it from now on
	defer l.Close()
	f, err := l.File()
	if err != nil {
		return nil, fmt.Errorf("attribution socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("attribution socket: %w", err)
	}
	return f, nil
}
