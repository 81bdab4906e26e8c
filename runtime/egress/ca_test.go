package egress

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

func TestSandboxCA(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "ca.pem")
	certPEM, err := WriteCAFile(f, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CA file mode: %v %v", st.Mode(), err)
	}
	if _, err := WriteCAFile(f, "sb1"); err == nil {
		t.Fatal("WriteCAFile overwrote an existing file")
	}
	ca, err := LoadCA(f)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	for _, name := range []string{"api.example.com", "198.51.100.7"} {
		c, err := ca.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		opts := x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := c.Leaf.Verify(opts); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example.com"}); err == nil {
			t.Errorf("%s's certificate is valid for another name", name)
		}
		if again, _ := ca.Certificate(name); again != c {
			t.Errorf("%s: issued again while fresh", name)
		}
	}
	// The certificate entering the sandbox holds no key.
	if bytes.Contains(certPEM, []byte("PRIVATE")) {
		t.Fatal("the CA certificate PEM holds a key")
	}
	blk, _ := pem.Decode(certPEM)
	cert, _ := x509.ParseCertificate(blk.Bytes)
	if !cert.IsCA || !cert.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA %v MaxPathLenZero %v", cert.IsCA, cert.MaxPathLenZero)
	}
	// Another sandbox's CA is another CA: its certificates do not verify
	// under this one.
	other, err := WriteCAFile(filepath.Join(dir, "other.pem"), "sb2")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other, certPEM) {
		t.Fatal("two sandboxes got the same CA")
	}
	ca2, err := LoadCA(filepath.Join(dir, "other.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := ca2.Certificate("api.example.com")
	if _, err := c2.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "api.example.com"}); err == nil {
		t.Fatal("sandbox 2's certificate verifies under sandbox 1's CA")
	}
}

func TestCALeavesBounded(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ca.pem")
	if _, err := WriteCAFile(f, "sb"); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(f)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < maxLeaves+10; i++ {
		name := "n" + string(rune('a'+i%26)) + string(rune('a'+(i/26)%26)) + string(rune('a'+(i/676)%26)) + ".example"
		if _, err := ca.Certificate(name); err != nil {
			t.Fatal(err)
		}
		if len(ca.leaves) > maxLeaves {
			t.Fatalf("%d certificates kept, bound %d", len(ca.leaves), maxLeaves)
		}
	}
}
