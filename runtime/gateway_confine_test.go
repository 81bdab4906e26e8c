package runtime

import "testing"

func TestParseGatewayUser(t *testing.T) {
	for _, c := range []struct {
		in       string
		uid, gid int
		ok       bool
	}{
		{"65534", 65534, 65534, true},
		{"1000:2000", 1000, 2000, true},
		{"0", 0, 0, false},
		{"1000:0", 0, 0, false},
		{"root", 0, 0, false},
		{"no-such-user-here", 0, 0, false},
		{"1000:x", 0, 0, false},
	} {
		uid, gid, err := parseGatewayUser(c.in)
		if (err == nil) != c.ok || (c.ok && (uid != c.uid || gid != c.gid)) {
			t.Errorf("%q: %d:%d %v", c.in, uid, gid, err)
		}
	}
}

func TestValidateGateway(t *testing.T) {
	e := EgressConfig{GatewayUser: "root", GatewayMemoryMB: 8, GatewayPidsMax: 1 << 20, GatewayProcs: 257}
	if errs := e.validateGateway(); len(errs) != 4 {
		t.Errorf("want 4 errors, got %v", errs)
	}
	for _, e := range []EgressConfig{{GatewayProcs: -1}, {GatewayProcs: 129}, {GatewayProcs: 17, GatewayPidsMax: 32}} {
		if errs := e.validateGateway(); len(errs) != 1 || errs[0].field != "egress.gateway_procs" {
			t.Errorf("%+v: %v", e, errs)
		}
	}
	if errs := (EgressConfig{GatewayProcs: 16, GatewayPidsMax: 32}).validateGateway(); len(errs) != 0 {
		t.Errorf("gateway_procs 16 of 32 pids: %v", errs)
	}
	if errs := (EgressConfig{}).validateGateway(); len(errs) != 0 {
		t.Errorf("defaults: %v", errs)
	}
	c := (EgressConfig{GatewayUser: "1000:1001", GatewayMemoryMB: 512, GatewayProcs: 2}).gatewayConfine()
	if c.UID != 1000 || c.GID != 1001 || c.MemoryMax != 512<<20 || c.Procs != 2 {
		t.Errorf("confine: %+v", c)
	}
}
