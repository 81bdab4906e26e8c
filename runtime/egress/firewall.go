package egress

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CatchPort is where the gateway namespace's firewall redirects TCP to
// every port the gateway does not serve, so each such connection is
// decided and audited by the gateway rather than reset by the kernel.
const CatchPort = 15000

// tproxyMark marks the UDP the firewall hands to the gateway.
const tproxyMark = 0x05e11

// servedTCP are the gateway's own TCP ports.
var servedTCP = []uint16{DNSPort, 80, 443, ProxyPort}

// firewall installs the gateway namespace's nftables ruleset: TCP to any
// port the gateway does not serve is redirected to CatchPort, and UDP to
// any port but DNS is handed (TPROXY) to the UDP catch-all on CatchPort;
// the input chain accepts only the gateway's ports, what those two rules
// delivered, ICMP (which the gateway's raw socket audits and the kernel
// does not answer), established traffic and loopback, and drops the rest.
// The namespace already forwards nothing; this is the second wall, and
// what makes every attempt reach the audit log.
func (t *Topology) firewall() error {
	ns, err := netns.GetFromPath(t.Gateway)
	if err != nil {
		return err
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "openshell"})

	served := &nftables.Set{Table: table, Name: "served", KeyType: nftables.TypeInetService}
	accepted := &nftables.Set{Table: table, Name: "accepted", KeyType: nftables.TypeInetService}
	var servedElems, acceptedElems []nftables.SetElement
	for _, p := range servedTCP {
		servedElems = append(servedElems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
	}
	acceptedElems = append(append(acceptedElems, servedElems...), nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(CatchPort)})
	if err := c.AddSet(served, servedElems); err != nil {
		return fmt.Errorf("nftables set: %w", err)
	}
	if err := c.AddSet(accepted, acceptedElems); err != nil {
		return fmt.Errorf("nftables set: %w", err)
	}

	pre := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: pre, Exprs: append(append(l4(unix.IPPROTO_TCP), dport(served, true)...),
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(CatchPort)},
		&expr.Redir{RegisterProtoMin: 1},
	)})

	// UDP to anywhere but DNS goes, unchanged, to the gateway's UDP
	// catch-all (TPROXY keeps the original destination for it to read);
	// the mark lets the input chain accept what TPROXY delivered.
	mangle := c.AddChain(&nftables.Chain{
		Name: "tproxy", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: mangle, Exprs: append(l4(unix.IPPROTO_UDP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.BigEndian.PutUint16(DNSPort)},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(CatchPort)},
		&expr.TProxy{Family: byte(nftables.TableFamilyIPv4), TableFamily: byte(nftables.TableFamilyIPv4), RegPort: 1},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(tproxyMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	)})

	drop := nftables.ChainPolicyDrop
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop,
	})
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		accept,
	}})
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
		accept,
	}})
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: append(append(l4(unix.IPPROTO_TCP), dport(accepted, false)...), accept)})
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: append(l4(unix.IPPROTO_UDP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(DNSPort)},
		accept,
	)})
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(tproxyMark)},
		accept,
	}})
	// ICMP reaches the gateway's raw socket, which audits it; the kernel
	// answers none of it (icmp_echo_ignore_all) and forwards nothing.
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: append(l4(unix.IPPROTO_ICMP), accept)})
	c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: install the gateway's ruleset: %w", err)
	}
	return nil
}

func l4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func dport(set *nftables.Set, invert bool) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert},
	}
}

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
