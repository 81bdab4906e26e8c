package runtime

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"

	"github.com/openshell/openshell/runtime/egress"
)

// Bounds of the [egress] gateway_* keys.
const (
	minGatewayMemoryMB = 32
	maxGatewayMemoryMB = 16384
	minGatewayPids     = 32
	maxGatewayPids     = 65536
	maxGatewayProcs    = 256
)

type fieldError struct{ field, msg string }

// validateGateway checks the gateway's confinement keys.
func (e EgressConfig) validateGateway() []fieldError {
	var errs []fieldError
	if e.GatewayUser != "" {
		if _, _, err := parseGatewayUser(e.GatewayUser); err != nil {
			errs = append(errs, fieldError{"egress.gateway_user", err.Error()})
		}
	}
	if e.MonitorUser != "" {
		if _, _, err := parseGatewayUser(e.MonitorUser); err != nil {
			errs = append(errs, fieldError{"egress.monitor_user", err.Error()})
		}
	}
	if m := e.GatewayMemoryMB; m != 0 && (m < minGatewayMemoryMB || m > maxGatewayMemoryMB) {
		errs = append(errs, fieldError{"egress.gateway_memory_mb", fmt.Sprintf("%d is not between %d and %d (MiB)", m, minGatewayMemoryMB, maxGatewayMemoryMB)})
	}
	if p := e.GatewayPidsMax; p != 0 && (p < minGatewayPids || p > maxGatewayPids) {
		errs = append(errs, fieldError{"egress.gateway_pids_max", fmt.Sprintf("%d is not between %d and %d", p, minGatewayPids, maxGatewayPids)})
	}
	if p := e.GatewayProcs; p < 0 || p > maxGatewayProcs {
		errs = append(errs, fieldError{"egress.gateway_procs", fmt.Sprintf("%d is not between 1 and %d", p, maxGatewayProcs)})
	} else if c := e.gatewayConfine().WithDefaults(); c.Procs > c.PidsMax/2 {
		// Go needs a thread per running P and more for system calls: a
		// gateway that cannot make them dies (closed, but down).
		errs = append(errs, fieldError{"egress.gateway_procs", fmt.Sprintf("%d is more than half of gateway_pids_max (%d): the gateway's threads count against it", c.Procs, c.PidsMax)})
	}
	return errs
}

// parseGatewayUser reads "uid", "uid:gid" or a user name (its primary
// group). Root, as user or group, is refused: the gateway must hold
// nothing once its sockets are made.
func parseGatewayUser(s string) (uid, gid int, err error) {
	us, gs, hasGID := strings.Cut(s, ":")
	uid, err = strconv.Atoi(us)
	if err != nil {
		u, lerr := user.Lookup(us)
		if lerr != nil {
			return 0, 0, fmt.Errorf("%q is not a uid, uid:gid, or a known user", s)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	} else {
		gid = uid
	}
	if hasGID {
		if gid, err = strconv.Atoi(gs); err != nil {
			return 0, 0, fmt.Errorf("%q: group %q is not a number", s, gs)
		}
	}
	if uid <= 0 || gid <= 0 || uid > 1<<31-2 || gid > 1<<31-2 {
		return 0, 0, fmt.Errorf("%q: the gateway may not run as root or an invalid id (uid %d, gid %d)", s, uid, gid)
	}
	return uid, gid, nil
}

// gatewayConfine is what the gateway is held to; zero fields take the
// gateway's defaults.
func (e EgressConfig) gatewayConfine() egress.Confine {
	var c egress.Confine
	if e.GatewayUser != "" {
		c.UID, c.GID, _ = parseGatewayUser(e.GatewayUser) // validated on load
	}
	c.MemoryMax = int64(e.GatewayMemoryMB) << 20
	c.PidsMax = e.GatewayPidsMax
	c.Procs = e.GatewayProcs
	return c
}
