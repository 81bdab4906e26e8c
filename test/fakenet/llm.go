package fakenet

import (
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/openshell/openshell/runtime/egress"
	"github.com/openshell/openshell/test/fakellm"
)

// LLMAddr is where StartLLM serves a fake model server (llm.test in the
// inference tests' zones); LLMAddr2 a second one.
var (
	LLMAddr  = netip.MustParseAddr("198.51.100.30")
	LLMAddr2 = netip.MustParseAddr("198.51.100.31")
)

// StartLLM serves a fake OpenAI- and Anthropic-compatible model server
// on addr:80 in the fake internet, recording every request it receives.
func (n *Net) StartLLM(addr netip.Addr) (*fakellm.Server, error) {
	llm := &fakellm.Server{}
	err := egress.Do(n.Inet, func() error {
		nl, h, err := handleAt(n.Inet)
		if err != nil {
			return err
		}
		defer h.Close()
		defer nl.Close()
		if err := addAddr(nl, "lo", addr, 32); err != nil {
			return err
		}
		l, err := net.Listen("tcp4", netip.AddrPortFrom(addr, 80).String())
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: llm, ReadHeaderTimeout: 10 * time.Second}
		n.closers = append(n.closers, srv)
		go func() { _ = srv.Serve(l) }()
		return nil
	})
	return llm, err
}
